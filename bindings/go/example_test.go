package wspush_test

import (
	"errors"
	"fmt"
	"time"

	wspush "wspush/bindings/go"
)

// A host authenticates each connection in the upgrade handler and publishes from any
// goroutine.
func Example() {
	server, err := wspush.Start(wspush.Config{
		Listen: "127.0.0.1:0", // any free port; see server.Port()
		Handler: wspush.HandlerFuncs{
			Upgrade: func(s *wspush.Server, r *wspush.Request) {
				// Who is this? Check a session token for real; here ?user=NAME.
				if user := r.Query("user"); user != "" {
					_ = r.Accept([]byte(user))
				} else {
					_ = r.Reject(401)
				}
			},
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer server.Stop() // graceful: 1001 to every client, then released

	delivered, err := server.Publish([]byte("alice"), []byte(`{"new_mail":1}`), false)
	fmt.Println(delivered, err) // alice has no open tab yet
	// Output: 0 <nil>
}

// Slow authentication (a database lookup) must not block the I/O thread: defer the decision
// and complete it from a goroutine.
func ExampleRequest_Defer() {
	lookupSession := func(token string) (string, bool) {
		time.Sleep(10 * time.Millisecond) // stands in for a session-store round trip
		return "alice", token == "valid"
	}
	server, err := wspush.Start(wspush.Config{
		Listen: "127.0.0.1:0",
		Handler: wspush.HandlerFuncs{
			Upgrade: func(s *wspush.Server, r *wspush.Request) {
				token := r.Query("token") // read what you need before the callback returns
				ticket, err := r.Defer()
				if err != nil {
					return // undecided: rejected with 401
				}
				go func() {
					if user, ok := lookupSession(token); ok {
						_ = s.AcceptUpgrade(ticket, []byte(user))
					} else {
						_ = s.RejectUpgrade(ticket, 401)
					}
				}()
			},
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer server.Stop()
	fmt.Println(server.Port() > 0)
	// Output: true
}

// With a JWT secret and no upgrade handler, the engine itself lets in every client whose
// token (ws://host/ws?token=JWT, or "Authorization: Bearer JWT") is a valid HS256 JWT, as the
// token's sub; anything else gets 401 "invalid token". An upgrade handler may add its own
// rules on top, reading r.VerifiedUser().
func ExampleConfig_jwt() {
	server, err := wspush.Start(wspush.Config{
		Listen:              "127.0.0.1:0",
		JWTHS256Secret:      []byte("the secret your auth service signs with"), // at least 32 bytes
		MaxConnectionsPerIP: 100,                                               // the next gets 429
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer server.Stop()

	_, err = wspush.Start(wspush.Config{Listen: "127.0.0.1:0", JWTHS256Secret: []byte("too short")})
	fmt.Println(errors.Is(err, wspush.ErrInvalidArgument))
	// Output: true
}
