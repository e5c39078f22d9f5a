package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A udpProber sends one UDP datagram every interval from the client pod to
// the server pod's echo ports and records when each was sent and when its
// echo came back.
//
// Every probe is a new flow: its own socket, bound to a source port no
// earlier probe used, so the datapath judges each one against the policy
// in force when it is sent (Membrane applies policy to the first packet of
// a connection; later ones pass on conntrack, and a denied packet creates
// no conntrack entry). The tuple space, 50000 source ports × the
// destination ports, bounds the number of probes; with four ports and
// 0.5 ms that is 100 s, longer than the datapath's 60 s lifetime of a UDP
// conntrack entry, so a tuple is never reused while its entry may live.
//
// The prober runs on one OS thread that enters the client's network
// namespace and never leaves it (the thread ends with the goroutine, so no
// other goroutine ever runs in that namespace); sockets are created there,
// sends are paced by a timerfd and echoes collected with epoll.
type udpProber struct {
	src, dst netip.Addr
	ports    []uint16
	interval time.Duration
	start    time.Time // probe times are nanoseconds since start (monotonic)

	mu   sync.Mutex
	sent []int64 // per probe sequence number, ascending (when it was sent or tried)
	recv []int64 // 0 until the echo arrives; -1 when it could not be sent

	lastEcho atomic.Int64 // receive time of the newest echo (0: none yet)
	stop     chan struct{}
	done     chan error
}

// Prober bounds.
const (
	probeSrcPortBase  = 10000
	probeSrcPorts     = 50000
	probeReplyTimeout = 50 * time.Millisecond // an echo later than this is not waited for
	probeMaxOpen      = 4096                  // sockets awaiting an echo
)

// probeTuple is the (source port, destination port) of probe seq.
func probeTuple(seq int, ports []uint16) (uint16, uint16) {
	return uint16(probeSrcPortBase + seq%probeSrcPorts), ports[(seq/probeSrcPorts)%len(ports)]
}

func newUDPProber(src, dst netip.Addr, ports []uint16, interval time.Duration) *udpProber {
	maxProbes := probeSrcPorts * len(ports)
	return &udpProber{
		src: src, dst: dst, ports: ports, interval: interval,
		sent: make([]int64, 0, maxProbes),
		recv: make([]int64, 0, maxProbes),
		stop: make(chan struct{}),
		done: make(chan error, 1),
	}
}

// Start runs the prober inside the namespace at netnsPath until Stop.
func (p *udpProber) Start(netnsPath string) {
	p.start = time.Now()
	go func() { p.done <- p.run(netnsPath) }()
}

// Stop ends the prober and returns the error that ended it early, if any.
func (p *udpProber) Stop() error {
	close(p.stop)
	return <-p.done
}

func (p *udpProber) now() int64 { return time.Since(p.start).Nanoseconds() }

// LastEcho is the receive time of the newest echo, 0 if none came yet.
func (p *udpProber) LastEcho() int64 { return p.lastEcho.Load() }

// FirstEchoAfter is the earliest receive time later than t, 0 if none.
func (p *udpProber) FirstEchoAfter(t int64) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Echoes come back within probeReplyTimeout of their probe.
	from := t - probeReplyTimeout.Nanoseconds()
	i, _ := slices.BinarySearch(p.sent, from)
	first := int64(0)
	for ; i < len(p.recv); i++ {
		if r := p.recv[i]; r > t && (first == 0 || r < first) {
			first = r
		}
	}
	return first
}

// SentBetween counts the probes sent in (a, b].
func (p *udpProber) SentBetween(a, b int64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearch(p.sent, a+1)
	n := 0
	for ; i < len(p.sent) && p.sent[i] <= b; i++ {
		if p.recv[i] >= 0 {
			n++
		}
	}
	return n
}

// Counts returns how many probes were sent and how many were echoed.
func (p *udpProber) Counts() (sent, echoed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.recv {
		if r >= 0 {
			sent++
		}
		if r > 0 {
			echoed++
		}
	}
	return sent, echoed
}

func (p *udpProber) run(netnsPath string) (retErr error) {
	// Never unlocked: the thread's namespace is changed below, and a
	// locked thread whose goroutine exits is terminated by the runtime.
	runtime.LockOSThread()
	nsfd, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("prober: open %s: %w", netnsPath, err)
	}
	err = unix.Setns(nsfd, unix.CLONE_NEWNET)
	unix.Close(nsfd)
	if err != nil {
		return fmt.Errorf("prober: enter %s: %w", netnsPath, err)
	}
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("prober: timerfd: %w", err)
	}
	defer unix.Close(tfd)
	iv := unix.NsecToTimespec(p.interval.Nanoseconds())
	if err := unix.TimerfdSettime(tfd, 0, &unix.ItimerSpec{Interval: iv, Value: iv}, nil); err != nil {
		return fmt.Errorf("prober: arm timerfd: %w", err)
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("prober: epoll: %w", err)
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, tfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(tfd)}); err != nil {
		return fmt.Errorf("prober: epoll add timerfd: %w", err)
	}

	type pending struct {
		fd, seq int
		sent    int64
	}
	open := map[int]int{} // fd → seq
	var queue []pending   // in send order, for expiry
	defer func() {
		for fd := range open {
			unix.Close(fd)
		}
	}()
	closeProbe := func(fd int) {
		delete(open, fd)
		unix.Close(fd)
	}
	events := make([]unix.EpollEvent, 64)
	buf := make([]byte, 64)
	var tick [8]byte
	for {
		select {
		case <-p.stop:
			return nil
		default:
		}
		n, err := unix.EpollWait(ep, events, 20)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("prober: epoll wait: %w", err)
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if fd == tfd {
				// Missed ticks (the thread was not scheduled) are not made
				// up for: one probe per wake-up.
				_, _ = unix.Read(tfd, tick[:])
				if len(p.sent) == cap(p.sent) {
					return fmt.Errorf("prober: all %d probe tuples used", cap(p.sent))
				}
				if len(open) >= probeMaxOpen {
					continue
				}
				sfd, sentAt, err := p.send()
				if err != nil {
					return err
				}
				if sfd >= 0 {
					open[sfd] = len(p.sent) - 1
					queue = append(queue, pending{sfd, len(p.sent) - 1, sentAt})
					if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, sfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(sfd)}); err != nil {
						return fmt.Errorf("prober: epoll add: %w", err)
					}
				}
				continue
			}
			seq, ok := open[fd]
			if !ok {
				continue
			}
			m, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				// ICMP errors (port unreachable) surface here: no echo.
				closeProbe(fd)
				continue
			}
			at := p.now()
			if m >= 8 && int(binary.BigEndian.Uint64(buf[:8])) == seq {
				p.mu.Lock()
				p.recv[seq] = at
				p.mu.Unlock()
				p.lastEcho.Store(at)
			}
			closeProbe(fd)
		}
		// Give up on probes whose echo is overdue.
		cutoff := p.now() - probeReplyTimeout.Nanoseconds()
		for len(queue) > 0 && queue[0].sent < cutoff {
			if s, ok := open[queue[0].fd]; ok && s == queue[0].seq {
				closeProbe(queue[0].fd)
			}
			queue = queue[1:]
		}
	}
}

// send sends the next probe from a fresh socket and records it; the socket
// is returned for the echo (-1 when this tuple could not be used).
func (p *udpProber) send() (int, int64, error) {
	seq := len(p.sent)
	sport, dport := probeTuple(seq, p.ports)
	record := func(at int64, ok bool) {
		r := int64(0)
		if !ok {
			r = -1
		}
		p.mu.Lock()
		p.sent = append(p.sent, at)
		p.recv = append(p.recv, r)
		p.mu.Unlock()
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("prober: socket: %w", os.NewSyscallError("socket", err))
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(sport), Addr: p.src.As4()}); err != nil {
		// Taken by something else in the pod: skip this tuple.
		unix.Close(fd)
		record(p.now(), false)
		return -1, 0, nil
	}
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], uint64(seq))
	at := p.now()
	if err := unix.Sendto(fd, msg[:], 0, &unix.SockaddrInet4{Port: int(dport), Addr: p.dst.As4()}); err != nil {
		unix.Close(fd)
		record(at, false)
		return -1, 0, nil
	}
	record(at, true)
	return fd, at, nil
}
