//! The top of the engine: [`Server`] binds the listeners, starts the I/O threads and stops them
//! when dropped. Publishing and control go through the [`ServerHandle`] it dereferences to
//! (`handle.rs`, re-exported here where it has always been).

use std::net::ToSocketAddrs;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::cluster::BridgeSetup;
use crate::config::Config;
use crate::error::Error;
use crate::event_loop::IoThreadSetup;
use crate::handle::{Shared, ThreadShared};
use crate::handler::Handler;
use crate::socket;

pub use crate::handle::ServerHandle;

/// A running server: owns the I/O threads and stops them (gracefully) when dropped.
/// Dereferences to [`ServerHandle`] for publishing and control.
pub struct Server {
    handle: ServerHandle,
    stop_on_drop: bool,
}

impl Server {
    /// Binds the listening socket(s) and starts the I/O threads.
    pub fn start(config: Config, handler: impl Handler) -> Result<Server, Error> {
        Self::start_boxed(config, Box::new(handler))
    }

    /// Like [`Server::start`] with an already boxed handler.
    pub fn start_boxed(config: Config, handler: Box<dyn Handler>) -> Result<Server, Error> {
        config.validate().map_err(Error::InvalidConfig)?;
        let addr =
            config.listen.to_socket_addrs().map_err(|_| Error::InvalidAddress)?.next().ok_or(Error::InvalidAddress)?;
        let thread_count = config.io_threads();
        let buffers = socket::BufferSizes { send: config.socket_send_buffer, recv: config.socket_recv_buffer };
        let listeners = socket::bind_listeners(addr, thread_count, buffers).map_err(Error::Bind)?;
        let local_addr = listeners[0].local_addr().map_err(Error::Bind)?;
        let max_connections = connection_cap(config.max_connections, thread_count);
        // Room for every connection plus each thread's poller, waker and reserve, before any storm.
        if let Some(newest) = listeners.last() {
            socket::reserve_descriptors(newest.as_raw_fd(), max_connections.saturating_add(3 * thread_count));
        }

        let mut loops = Vec::with_capacity(thread_count);
        let mut thread_shared = Vec::with_capacity(thread_count);
        for (index, listener) in listeners.into_iter().enumerate() {
            let (io, waker) = IoThreadSetup::new(index as u8, listener).map_err(Error::Io)?;
            loops.push(io);
            thread_shared.push(ThreadShared::new(waker));
        }
        let bridge = config.redis_url.is_some().then(BridgeSetup::new).transpose().map_err(Error::Io)?;
        let outbox = bridge.as_ref().map(BridgeSetup::outbox);
        let handler: Arc<dyn Handler> = Arc::from(handler);
        let keep_alive = Box::new(handler.clone());
        let threads = thread_shared.into_boxed_slice();
        let shared = Shared::new(config, keep_alive, local_addr, threads, max_connections, outbox);
        let handle = ServerHandle { shared: Arc::new(shared) };
        // Own the handle before spawning so a failed spawn still stops the threads already running.
        let server = Server { handle: handle.clone(), stop_on_drop: true };
        for io in loops {
            let (thread_handle, thread_handler) = (handle.clone(), handler.clone());
            let join = std::thread::Builder::new()
                .name(format!("wspush-io-{}", io.index()))
                .stack_size(handle.shared.config.io_thread_stack_size())
                .spawn(move || io.run(thread_handle, thread_handler))
                .map_err(Error::Io)?;
            handle.add_thread(join);
        }
        if let Some(bridge) = bridge {
            let bridge_handle = handle.clone();
            let join = std::thread::Builder::new()
                .name("wspush-redis".into())
                .spawn(move || bridge.run(bridge_handle))
                .map_err(Error::Io)?;
            handle.add_thread(join);
        }
        Ok(server)
    }

    /// A cloneable handle for other threads.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Gives up ownership without stopping: the server runs until `ServerHandle::stop`.
    pub fn into_handle(mut self) -> ServerHandle {
        self.stop_on_drop = false;
        self.handle.clone()
    }
}

impl std::ops::Deref for Server {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stop_on_drop {
            self.handle.stop();
        }
    }
}

/// Descriptors left to the host process when the connection cap is derived from RLIMIT_NOFILE.
const HOST_DESCRIPTORS: usize = 64;

/// `wanted`, lowered to what RLIMIT_NOFILE leaves once the host keeps some descriptors and each
/// I/O thread has its poller, waker and reserve: a cap the process cannot reach would leave
/// clients past it waiting in the backlog, unanswered, instead of getting 503. Said on stderr
/// when it happens, and in `Stats::max_connections`.
fn connection_cap(wanted: usize, threads: usize) -> usize {
    let Some(left) = socket::descriptors_left() else { return wanted };
    let allowed = left.saturating_sub(HOST_DESCRIPTORS + 3 * threads).max(1);
    if wanted > allowed {
        eprintln!(
            "wspush: max_connections {wanted} is more than the open-files limit allows; capped to {allowed} \
             (raise RLIMIT_NOFILE, e.g. ulimit -n or LimitNOFILE=, for more)"
        );
    }
    wanted.min(allowed)
}
