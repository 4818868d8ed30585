// Command netns-forward lets the host reach a server inside a network
// namespace over loopback, without a route or firewall rule on the host:
// it listens on LISTEN (a loopback address of the namespace it runs in)
// and, for each connection, connects to TARGET from inside the network
// namespace NETNS (a file such as /run/netns/NAME), then copies bytes
// both ways until either side closes.
//
//	netns-forward /run/netns/wasmbox-cluster 127.0.0.1:36443 127.0.0.1:36443
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// dialIn connects to target from inside the namespace open as ns. The
// thread that enters the namespace is never handed back to the Go runtime
// (its goroutine ends locked, which ends the thread).
func dialIn(ns *os.File, target string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{nil, fmt.Errorf("setns %s: %w", ns.Name(), err)}
			return
		}
		c, err := net.Dial("tcp", target)
		done <- result{c, err}
	}()
	r := <-done
	return r.conn, r.err
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: netns-forward NETNS-FILE LISTEN-ADDR TARGET-ADDR")
		os.Exit(2)
	}
	ns, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		client, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			continue
		}
		go func() {
			defer client.Close()
			server, err := dialIn(ns, os.Args[3])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return
			}
			defer server.Close()
			go func() {
				io.Copy(server, client)
				server.(*net.TCPConn).CloseWrite()
			}()
			io.Copy(client, server)
		}()
	}
}
