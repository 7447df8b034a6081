module wspush/examples/go_host

go 1.24

require (
	github.com/gorilla/websocket v1.5.3
	wspush/bindings/go v0.0.0-00010101000000-000000000000
)

// The binding lives in this repository (build the library first: cargo build --release, and set
// PKG_CONFIG_PATH=../../target/release/pkgconfig; see bindings/go/README.md).
replace wspush/bindings/go => ../../bindings/go
