//go:build tools

// Package tools pins kube-network-policies, the Kubernetes SIG's reference NetworkPolicy enforcer, which the
// traffic benchmark runs side by side with flowgate. Built by scripts/build-kube-network-policies.sh.
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/cmd"
)
