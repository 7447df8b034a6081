// Command go_check is tests/install.sh's Go user: it links the wspush binding against an
// installed libwspush (found through PKG_CONFIG_PATH=<prefix>/lib/pkgconfig alone), pushes one
// message to a real WebSocket client, and prints which libwspush the process loaded so the
// script can tell the installed copy from the checkout's build.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	wspush "wspush/bindings/go"
)

const message = "hello from Go"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "go_check:", err)
		os.Exit(1)
	}
}

func run() error {
	opened := make(chan struct{}, 1)
	server, err := wspush.Start(wspush.Config{Listen: "127.0.0.1:0", Threads: 1, MaxConnections: 64, Handler: wspush.HandlerFuncs{
		Upgrade: func(_ *wspush.Server, r *wspush.Request) {
			if user := r.Query("user"); user != "" {
				_ = r.Accept([]byte(user))
			} else {
				_ = r.Reject(401)
			}
		},
		Open: func(*wspush.Server, wspush.ConnID, []byte) { opened <- struct{}{} },
	}})
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer server.Stop()

	url := fmt.Sprintf("ws://127.0.0.1:%d/ws?user=alice", server.Port())
	client, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	defer client.Close()
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("no OnOpen within 10 s")
	}
	delivered, err := server.Publish([]byte("alice"), []byte(message), false)
	if err != nil || delivered != 1 {
		return fmt.Errorf("publish: delivered %d, error %v", delivered, err)
	}
	if err := client.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	_, received, err := client.ReadMessage()
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(received) != message {
		return fmt.Errorf("received %q, want %q", received, message)
	}
	library, err := loadedLibrary()
	if err != nil {
		return err
	}
	fmt.Printf("go_check: wspush %s from %s: published and received %q\n", wspush.Version(), library, received)
	return nil
}

// loadedLibrary is the path of the libwspush this process mapped.
func loadedLibrary() (string, error) {
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		return "", err
	}
	defer maps.Close()
	lines := bufio.NewScanner(maps)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) >= 6 && strings.Contains(fields[len(fields)-1], "libwspush") {
			return fields[len(fields)-1], nil
		}
	}
	return "", fmt.Errorf("no libwspush in /proc/self/maps")
}
