module wspush/tests/install/go_check

go 1.24

require (
	github.com/gorilla/websocket v1.5.3
	wspush/bindings/go v0.0.0-00010101000000-000000000000
)

// The binding's Go source comes from this checkout; the C library from the installed prefix
// (tests/install.sh sets PKG_CONFIG_PATH).
replace wspush/bindings/go => ../../../bindings/go
