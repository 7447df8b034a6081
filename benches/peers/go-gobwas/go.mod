module wspush/benches/peers/go-gobwas

go 1.26.0

require (
	github.com/gobwas/pool v0.2.1
	github.com/gobwas/ws v1.5.0
	github.com/mailru/easygo v0.0.0-20190618140210-3c14a0dc985f
)

require (
	github.com/gobwas/httphead v0.1.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
