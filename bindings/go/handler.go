package wspush

// Handler receives a server's events. Its methods run on the engine's I/O threads, several at
// once (never two at once for the same connection), so they must be safe for concurrent use
// and should return quickly. Byte slices are the handler's own copies.
//
// To handle only some events, use HandlerFuncs.
type Handler interface {
	// OnUpgrade decides a WebSocket upgrade request that passed the protocol checks (path,
	// version, key, origin) with r.Accept, r.Reject or r.Defer; r.VerifiedUser is the subject
	// of a valid JSON Web Token (Config.JWTHS256Secret), and DefaultUpgrade the engine's own
	// decision. Deciding nothing rejects with 401. r is valid only until OnUpgrade returns.
	OnUpgrade(s *Server, r *Request)
	// OnOpen: a connection was upgraded and registered under user.
	OnOpen(s *Server, conn ConnID, user []byte)
	// OnMessage: a complete message arrived from a client (text is valid UTF-8).
	OnMessage(s *Server, conn ConnID, user []byte, msg []byte, binary bool)
	// OnClose: an opened connection ended, exactly once per OnOpen. code is the peer's close
	// code, or ours (1001 on Stop, 1008 slow consumer, 1002/1007/1009 protocol errors), or
	// 1006 when the connection was lost without a close handshake.
	OnClose(s *Server, conn ConnID, user []byte, code int)
	// OnDrop: a message for conn was dropped because its queue was full (only with
	// SlowConsumerDrop). droppedBytes is the size of the dropped frame: the payload plus its
	// 2-14 byte WebSocket header.
	OnDrop(s *Server, conn ConnID, user []byte, droppedBytes int)
}

// HTTPHandler is implemented by a Handler that also answers plain HTTP requests (those
// without "Upgrade: websocket"), e.g. a health check.
type HTTPHandler interface {
	// OnHTTP answers with r.Respond; not answering gives 426 Upgrade Required. The connection
	// is closed after the response. r is valid only until OnHTTP returns.
	OnHTTP(s *Server, r *Request)
}

// HandlerFuncs is a Handler made of optional functions; nil ones are not called (and cost
// nothing). A nil Upgrade leaves upgrades to DefaultUpgrade (the engine decides, without a call
// into Go); a nil HTTP answers 426.
type HandlerFuncs struct {
	// Upgrade is Handler.OnUpgrade.
	Upgrade func(s *Server, r *Request)
	// Open is Handler.OnOpen.
	Open func(s *Server, conn ConnID, user []byte)
	// Message is Handler.OnMessage.
	Message func(s *Server, conn ConnID, user []byte, msg []byte, binary bool)
	// Close is Handler.OnClose.
	Close func(s *Server, conn ConnID, user []byte, code int)
	// Drop is Handler.OnDrop.
	Drop func(s *Server, conn ConnID, user []byte, droppedBytes int)
	// HTTP is HTTPHandler.OnHTTP.
	HTTP func(s *Server, r *Request)
}

// OnUpgrade calls f.Upgrade, or DefaultUpgrade when it is nil (e.g. for a type that embeds
// HandlerFuncs and is therefore installed as a whole Handler).
func (f HandlerFuncs) OnUpgrade(s *Server, r *Request) {
	if f.Upgrade != nil {
		f.Upgrade(s, r)
	} else {
		DefaultUpgrade(s, r)
	}
}

// DefaultUpgrade is the decision the engine makes when the host installs no upgrade handler:
// accept the request as the subject of its valid JSON Web Token (see Config.JWTHS256Secret and
// Request.VerifiedUser), else reject with 401 (whose body is "invalid token" when a secret is
// configured). Call it from an OnUpgrade that only adds rules on top of the token.
func DefaultUpgrade(s *Server, r *Request) {
	if user, ok := r.VerifiedUser(); ok {
		_ = r.Accept(user)
	} else {
		_ = r.Reject(401)
	}
}

// OnOpen calls f.Open if set.
func (f HandlerFuncs) OnOpen(s *Server, conn ConnID, user []byte) {
	if f.Open != nil {
		f.Open(s, conn, user)
	}
}

// OnMessage calls f.Message if set.
func (f HandlerFuncs) OnMessage(s *Server, conn ConnID, user []byte, msg []byte, binary bool) {
	if f.Message != nil {
		f.Message(s, conn, user, msg, binary)
	}
}

// OnClose calls f.Close if set.
func (f HandlerFuncs) OnClose(s *Server, conn ConnID, user []byte, code int) {
	if f.Close != nil {
		f.Close(s, conn, user, code)
	}
}

// OnDrop calls f.Drop if set.
func (f HandlerFuncs) OnDrop(s *Server, conn ConnID, user []byte, droppedBytes int) {
	if f.Drop != nil {
		f.Drop(s, conn, user, droppedBytes)
	}
}

// OnHTTP calls f.HTTP if set (else the request gets the default 426).
func (f HandlerFuncs) OnHTTP(s *Server, r *Request) {
	if f.HTTP != nil {
		f.HTTP(s, r)
	}
}
