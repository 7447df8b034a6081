package wspush

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A handler that runs while Start has not returned yet (clients connecting during the start)
// may call Port and Stop: Port answers, and the release waits for Start instead of racing it.
func TestStopAndPortInAHandlerThatRunsBeforeStartReturns(t *testing.T) {
	type seen struct {
		port    int
		stopErr error
	}
	handled := make(chan seen, 1)
	afterCStart = func(port int) {
		// Start is paused here: the C server runs, the Server does not have it yet.
		target := &Server{}
		target.port.Store(int32(port))
		go func() {
			if conn, _, err := dial(target, "", nil); err == nil {
				conn.Close()
			}
		}()
		select {
		case got := <-handled:
			handled <- got // for the test below
		case <-time.After(testTimeout):
			t.Errorf("no handler ran while Start was paused")
		}
	}
	defer func() { afterCStart = nil }()

	server, err := Start(Config{Listen: "127.0.0.1:0", Threads: 1, DrainTimeout: time.Second,
		CloseTimeout: 500 * time.Millisecond, Handler: HandlerFuncs{Upgrade: func(s *Server, r *Request) {
			got := seen{port: s.Port(), stopErr: s.Stop()}
			r.Reject(503)
			handled <- got
		}}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	got := <-handled
	select {
	case <-server.Done():
	case <-time.After(testTimeout):
		t.Fatal("the stop started by the handler did not finish")
	}
	if got.port == 0 || got.port != server.Port() {
		t.Errorf("Port() in the handler = %d, after Start = %d", got.port, server.Port())
	}
	if got.stopErr != nil {
		t.Errorf("Stop() in the handler: %v", got.stopErr)
	}
	// The final snapshot, not counters read from a released server.
	stats, err := server.Stats()
	if err != nil || stats.AcceptedTotal != 1 || stats.RejectedTotal != 1 || stats.Connections != 0 {
		t.Errorf("Stats() = %+v, %v; want the final snapshot of one rejected connection", stats, err)
	}
	if _, err := server.Publish([]byte("alice"), []byte("late"), false); !errors.Is(err, ErrStopped) {
		t.Errorf("Publish after the stop: %v, want ErrStopped", err)
	}
	if err := server.Stop(); err != nil {
		t.Errorf("Stop again: %v", err)
	}
}

func TestAZeroValueServerIsAStoppedServer(t *testing.T) {
	var server Server
	if err := server.Stop(); !errors.Is(err, ErrStopped) {
		t.Errorf("Stop on a zero Server: %v, want ErrStopped", err)
	}
	if _, err := server.Stats(); !errors.Is(err, ErrStopped) {
		t.Errorf("Stats on a zero Server: %v, want ErrStopped", err)
	}
	select {
	case <-server.Done():
	case <-time.After(testTimeout):
		t.Error("Done of a zero Server is not closed")
	}
	if _, err := server.Publish([]byte("alice"), []byte("x"), false); !errors.Is(err, ErrStopped) {
		t.Errorf("Publish on a zero Server: %v, want ErrStopped", err)
	}
	if port := server.Port(); port != 0 {
		t.Errorf("Port of a zero Server = %d", port)
	}
}

func TestThreadStackSizeIsCheckedAndApplied(t *testing.T) {
	for _, size := range []int{-1, 64*1024 - 1} {
		if _, err := Start(Config{Listen: "127.0.0.1:0", ThreadStackSize: size}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ThreadStackSize %d: %v, want ErrInvalidArgument", size, err)
		}
	}
	server := startServer(t, Config{ThreadStackSize: 256 * 1024, Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	conn := mustDial(t, server, "user=alice")
	waitFor(t, "open", func() bool { stats, _ := server.Stats(); return stats.Connections == 1 })
	if n, err := server.Publish([]byte("alice"), []byte("small stacks"), false); n != 1 || err != nil {
		t.Fatalf("Publish = %d, %v", n, err)
	}
	if got := readText(t, conn); got != "small stacks" {
		t.Errorf("got %q", got)
	}
}

// runtime.Goexit (t.Fatal, t.FailNow...) in a handler cannot be survived: the engine's thread
// was not created by Go. The process dies, but first says why, in words a test author knows.
func TestGoexitInAHandlerIsExplainedBeforeTheProcessDies(t *testing.T) {
	if os.Getenv("WSPUSH_GOEXIT_CHILD") == "1" {
		var logged bytes.Buffer
		server, err := Start(Config{Listen: "127.0.0.1:0", Threads: 1, ErrorLog: log.New(&logged, "", 0),
			Handler: HandlerFuncs{Upgrade: func(s *Server, r *Request) { runtime.Goexit() }}})
		if err != nil {
			fmt.Println("start:", err)
			os.Exit(3)
		}
		dial(server, "", nil)
		time.Sleep(testTimeout) // the process is expected to die before this ends
		fmt.Println("still alive after Goexit in a handler")
		os.Exit(0)
	}
	child := exec.Command(os.Args[0], "-test.run=^TestGoexitInAHandlerIsExplainedBeforeTheProcessDies$", "-test.count=1")
	child.Env = append(os.Environ(), "WSPUSH_GOEXIT_CHILD=1")
	output, err := child.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("the child: %v, want it killed by the runtime; output:\n%s", err, output)
	}
	text := string(output)
	for _, want := range []string{
		"wspush: FATAL: the upgrade handler called runtime.Goexit",
		"t.Fatal",
		"misuse_test.go", // the stack names the handler that called it
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the child's output lacks %q:\n%s", want, text)
		}
	}
}
