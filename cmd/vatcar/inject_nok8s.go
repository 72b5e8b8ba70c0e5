//go:build nok8s

// The sidecar image's build (-tags nok8s, tools/build.sh --sidecar) links no
// Kubernetes package: an idle sidecar's RSS is mostly its binary's touched
// pages, and k8s.io/api and its dependencies add about 4 MiB. It keeps
// `vatcar inject probe` (injectcmd.go, probe.go), which the injected regular
// sidecar's postStart hook runs, and refuses the injector's commands with exit status 2.

package main

import (
	"context"
	"fmt"
	"io"
)

func runInjectFile(_ []string, _ io.Reader, _, _ io.Writer) error {
	return notInBuild("-f")
}

func runInjectServe(context.Context, []string, io.Writer) error {
	return notInBuild("serve")
}

func runInjectSelfTest(context.Context, []string, io.Writer, io.Writer) error {
	return notInBuild("selftest")
}

func runCheck([]string, io.Reader, io.Writer, io.Writer) error {
	return fmt.Errorf("%w: check is not in this build (-tags nok8s, the sidecar image); use the vatcar-injector image or a full build", errUsage)
}

// notInBuild is the usage error (exit status 2) of an injector command that
// this build leaves out.
func notInBuild(cmd string) error {
	return fmt.Errorf("%w: inject %s is not in this build (-tags nok8s, the sidecar image); use the vatcar-injector image or a full build", errUsage, cmd)
}
