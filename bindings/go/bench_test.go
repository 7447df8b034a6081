package wspush

import (
	"io"
	"testing"
	"time"
)

// BenchmarkPublish measures Publish called in a loop from one goroutine: the cost of a publish
// from Go into the engine (cgo call, user lookup, framing, hand-off to the I/O thread).
//
//	go test -bench Publish -run '^$'
func BenchmarkPublish(b *testing.B) {
	msg := []byte(`{"event":"new_mail","folder":"INBOX","unseen":42,"from":"alice@example.com"}`)

	b.Run("one_connection", func(b *testing.B) {
		// A queue large enough that the reader keeps up on average; drops would show in
		// delivered/op.
		server := benchServer(b, Config{MaxQueueBytes: 256 << 20, SlowConsumer: SlowConsumerDrop})
		conn, _, err := dial(server, "user=reader", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		// The client discards the frames as fast as the socket gives them.
		go io.Copy(io.Discard, conn.UnderlyingConn())
		var delivered int
		user := []byte("reader")
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			n, err := server.Publish(user, msg, false)
			if err != nil {
				b.Fatal(err)
			}
			delivered += n
		}
		b.StopTimer()
		reportRate(b)
		b.ReportMetric(float64(delivered)/float64(b.N), "delivered/op")
		waitDrained(b, server)
	})

	b.Run("absent_user", func(b *testing.B) {
		server := benchServer(b, Config{})
		user := []byte("nobody-home")
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if n, err := server.Publish(user, msg, false); err != nil || n != 0 {
				b.Fatal(n, err)
			}
		}
		b.StopTimer()
		reportRate(b)
	})
}

func benchServer(b *testing.B, config Config) *Server {
	config.Listen = "127.0.0.1:0"
	config.Threads = 1
	config.CloseTimeout = 100 * time.Millisecond
	config.Handler = HandlerFuncs{Upgrade: queryUserAuth}
	server, err := Start(config)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { server.Stop() })
	return server
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "publishes/s")
}

// waitDrained waits (untimed) until the engine has written every delivered message, so the
// next round does not start with a backlog.
func waitDrained(b *testing.B, server *Server) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		stats, err := server.Stats()
		if err != nil {
			b.Fatal(err)
		}
		if stats.MessagesOutTotal+stats.DroppedTotal >= stats.PublishesTotal {
			if stats.DroppedTotal > 0 {
				b.ReportMetric(float64(stats.DroppedTotal), "dropped")
			}
			return
		}
		time.Sleep(time.Millisecond)
	}
}
