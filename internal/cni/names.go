package cni

import (
	"fmt"
	"strings"
)

// Syntax checks for Kubernetes-style names. Each returns "" when the input
// is valid and a short reason otherwise; callers add the field path.

const (
	maxLabelNameLen  = 63  // label name part, label value, DNS-1123 label
	maxSubdomainLen  = 253 // DNS-1123 subdomain (label key prefix, pod name)
	maxPortNameLen   = 15  // IANA service name
	maxLabelValueLen = 63
)

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func isLowerAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
}

// checkQualifiedName checks the name part of a label key, or a non-empty
// label value: at most 63 characters of [A-Za-z0-9._-], beginning and
// ending with an alphanumeric character.
func checkQualifiedName(s string) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > maxLabelNameLen {
		return fmt.Sprintf("is %d characters long, the limit is %d", len(s), maxLabelNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Sprintf("character %q is not allowed (use A-Z, a-z, 0-9, '-', '_', '.')", c)
		}
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return "must begin and end with an alphanumeric character"
	}
	return ""
}

// checkDNSSubdomain checks a DNS-1123 subdomain: at most 253 characters,
// dot-separated labels of lowercase alphanumerics and '-', each beginning
// and ending with an alphanumeric character.
func checkDNSSubdomain(s string) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > maxSubdomainLen {
		return fmt.Sprintf("is %d characters long, the limit is %d", len(s), maxSubdomainLen)
	}
	for part := range strings.SplitSeq(s, ".") {
		if msg := checkDNSLabel(part); msg != "" {
			return msg
		}
	}
	return ""
}

// checkDNSLabel checks a DNS-1123 label: at most 63 lowercase alphanumerics
// and '-', beginning and ending with an alphanumeric character.
func checkDNSLabel(s string) string {
	if s == "" {
		return "must not contain an empty DNS label"
	}
	if len(s) > maxLabelNameLen {
		return fmt.Sprintf("DNS label %q is longer than %d characters", s, maxLabelNameLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isLowerAlnum(c) && c != '-' {
			return fmt.Sprintf("character %q is not allowed (use a-z, 0-9, '-', '.')", c)
		}
	}
	if !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]) {
		return "must begin and end with a lowercase alphanumeric character"
	}
	return ""
}

// checkLabelKey checks a label key: an optional DNS subdomain prefix and
// '/', then a qualified name.
func checkLabelKey(k string) string {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name = k
	} else {
		if strings.Contains(name, "/") {
			return fmt.Sprintf("%q has more than one '/'", k)
		}
		if msg := checkDNSSubdomain(prefix); msg != "" {
			return fmt.Sprintf("%q: prefix %q %s", k, prefix, msg)
		}
	}
	if msg := checkQualifiedName(name); msg != "" {
		return fmt.Sprintf("%q: name %q %s", k, name, msg)
	}
	return ""
}

// checkLabelValue checks a label value; the empty value is allowed.
func checkLabelValue(v string) string {
	if v == "" {
		return ""
	}
	if len(v) > maxLabelValueLen {
		return fmt.Sprintf("is %d characters long, the limit is %d", len(v), maxLabelValueLen)
	}
	return checkQualifiedName(v)
}

// checkPortName checks a named port (an IANA service name, as Kubernetes
// does): 1-15 characters of lowercase alphanumerics and '-', at least one
// letter, no leading, trailing or doubled '-'.
func checkPortName(s string) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > maxPortNameLen {
		return fmt.Sprintf("is %d characters long, the limit is %d", len(s), maxPortNameLen)
	}
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z':
			letter = true
		case '0' <= c && c <= '9', c == '-':
		default:
			return fmt.Sprintf("has character %q (use a-z, 0-9, '-')", c)
		}
	}
	if !letter {
		return "must contain at least one letter"
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return "must not begin or end with '-'"
	}
	if strings.Contains(s, "--") {
		return "must not contain \"--\""
	}
	return ""
}
