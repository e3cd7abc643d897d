//! The runtime lapin runs on: async-rs's tokio kit bound to the module's runtime, with one
//! change. lapin drops a connection's socket on its own I/O thread, outside any tokio context;
//! the stock kit's socket then falls back to a process-wide runtime that async-compat starts on
//! a thread of its own and never stops, which would outlive `module unload`. Here the socket
//! enters our runtime's handle before it is dropped, so no such thread is ever started.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::Task;
use async_rs::{Runtime, Tokio};
use futures_io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;

#[derive(Clone, Debug)]
pub struct HandleKit {
    inner: Tokio,
    handle: Handle,
}

impl HandleKit {
    pub fn runtime(handle: Handle) -> Runtime<HandleKit> {
        Runtime::new(HandleKit { inner: Tokio::default().with_handle(handle.clone()), handle })
    }
}

impl RuntimeKit for HandleKit {}

impl Executor for HandleKit {
    type Task<T: Send + 'static> = <Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.inner.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(&self, f: F) -> Task<Self::Task<T>> {
        self.inner.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(&self, f: F) -> Task<Self::Task<T>> {
        self.inner.spawn_blocking(f)
    }
}

/// A connected socket that is dropped inside our runtime's context.
pub struct EnteredStream {
    inner: Option<<Tokio as Reactor>::TcpStream>,
    handle: Handle,
}

impl EnteredStream {
    fn stream(&mut self) -> Pin<&mut <Tokio as Reactor>::TcpStream> {
        Pin::new(self.inner.as_mut().expect("the stream lives until drop"))
    }
}

impl Drop for EnteredStream {
    fn drop(&mut self) {
        let _context = self.handle.enter();
        self.inner.take();
    }
}

impl AsyncRead for EnteredStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for EnteredStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_close(cx)
    }
}

impl Reactor for HandleKit {
    type TcpStream = EnteredStream;
    type Sleep = <Tokio as Reactor>::Sleep;

    fn register<H: io::Read + io::Write + AsFd + AsRawFd + Send + 'static>(&self, socket: H) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        self.inner.register(socket)
    }

    fn sleep(&self, d: Duration) -> Self::Sleep {
        self.inner.sleep(d)
    }

    fn interval(&self, d: Duration) -> impl futures_core::Stream<Item = Instant> + Send + 'static {
        self.inner.interval(d)
    }

    fn tcp_connect_addr(&self, addr: SocketAddr) -> impl Future<Output = io::Result<EnteredStream>> + Send + 'static {
        let handle = self.handle.clone();
        let connect = self.inner.tcp_connect_addr(addr);
        async move { connect.await.map(|s| EnteredStream { inner: Some(s), handle }) }
    }
}
