//! Writes of a few small parts gathered into one buffer, sent with one plain write.
//!
//! A vectored write (`writev`) costs the kernel more per call than a plain one (`send`): on
//! the broadcast's profile (`tests/bench/issue19/s17-perf-broadcast.txt`) `vfs_writev` alone
//! was 5.6% of the relay's time, where the floor's `sendto` path spent 2.2%. A frame's header
//! and a small payload cost less to copy together than to hand to the kernel apart. Parts
//! larger than [`GATHERED`] together are written as they are, with one vectored write.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_io::AsyncWrite;

/// Parts of at most this many bytes in all are copied into one buffer and written at once.
pub(crate) const GATHERED: usize = 8 * 1024;

thread_local! {
    /// Where a thread gathers a write's parts: [`GATHERED`] bytes, kept for the thread's life.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes a prefix of `parts` with one write: a plain write of one part, or of small parts
/// copied together; a vectored write of parts that are larger together than [`GATHERED`].
/// Returns what the socket took, as a write of `parts` in order would.
pub(crate) fn poll_write_parts<S: AsyncWrite + Unpin + ?Sized>(
    io: &mut S,
    parts: &[IoSlice<'_>],
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    match parts {
        [one] => Pin::new(io).poll_write(cx, one),
        [_, _, ..] if parts.iter().map(|part| part.len()).sum::<usize>() <= GATHERED => GATHER
            .with(|gather| {
                // Never held across another write; were it, the parts go as they are.
                let Ok(mut gather) = gather.try_borrow_mut() else {
                    return Pin::new(&mut *io).poll_write_vectored(cx, parts);
                };
                gather.clear();
                gather.reserve(GATHERED);
                for part in parts {
                    gather.extend_from_slice(part);
                }
                Pin::new(io).poll_write(cx, &gather)
            }),
        _ => Pin::new(io).poll_write_vectored(cx, parts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes up to `room` bytes per write and says which kind of write it got.
    struct Recorder {
        room: usize,
        taken: Vec<u8>,
        plain: usize,
        vectored: usize,
    }

    impl Recorder {
        fn new(room: usize) -> Self {
            Self {
                room,
                taken: Vec::new(),
                plain: 0,
                vectored: 0,
            }
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.room);
            self.taken.extend_from_slice(&buf[..n]);
            self.plain += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for buf in bufs {
                let part = buf.len().min(self.room - n);
                self.taken.extend_from_slice(&buf[..part]);
                n += part;
            }
            self.vectored += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes all of `parts` through [`poll_write_parts`], advancing past what each write
    /// took as the relay's writers do; returns the recorder.
    fn write_all(room: usize, parts: &[&[u8]]) -> Recorder {
        let mut io = Recorder::new(room);
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|part| IoSlice::new(part)).collect();
        let mut slices = &mut slices[..];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while !slices.is_empty() {
            let Poll::Ready(Ok(n)) = poll_write_parts(&mut io, slices, &mut cx) else {
                panic!("the recorder is always ready");
            };
            assert!(n > 0);
            IoSlice::advance_slices(&mut slices, n);
        }
        io
    }

    #[test]
    fn small_parts_go_in_one_plain_write_and_large_ones_as_they_are() {
        let header = [0x81u8, 0x7e, 0x08, 0x00];
        let payload = vec![b'x'; 2048];
        let io = write_all(usize::MAX, &[&header, &payload]);
        assert_eq!((io.plain, io.vectored), (1, 0));
        assert_eq!(io.taken, [&header[..], &payload].concat());

        let large = vec![b'y'; GATHERED];
        let io = write_all(usize::MAX, &[&header, &large]);
        assert_eq!((io.plain, io.vectored), (0, 1));
        assert_eq!(io.taken, [&header[..], &large].concat());

        let io = write_all(usize::MAX, &[&large]);
        assert_eq!((io.plain, io.vectored), (1, 0));
    }

    #[test]
    fn parts_of_exactly_the_limit_are_gathered_and_one_byte_more_are_not() {
        let header = [0x82u8, 0x7e, 0x1f, 0xfc];
        let fits = vec![b'z'; GATHERED - header.len()];
        let io = write_all(usize::MAX, &[&header, &fits]);
        assert_eq!((io.plain, io.vectored), (1, 0));
        assert_eq!(io.taken, [&header[..], &fits].concat());

        let over = vec![b'z'; GATHERED - header.len() + 1];
        let io = write_all(usize::MAX, &[&header, &over]);
        assert_eq!((io.plain, io.vectored), (0, 1));
        assert_eq!(io.taken, [&header[..], &over].concat());
    }

    #[test]
    fn a_short_vectored_write_leaves_the_rest_in_order_and_gathers_it_once_small() {
        let parts: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 3000]).collect();
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        // 18,000 bytes, 5,000 a write: vectored while more than the limit is left, then
        // gathered.
        let io = write_all(5000, &parts);
        assert_eq!(io.taken, parts.concat());
        assert_eq!((io.vectored, io.plain), (2, 2));
    }

    #[test]
    fn nothing_to_write_writes_nothing() {
        let mut io = Recorder::new(usize::MAX);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for parts in [&[][..], &[IoSlice::new(&[]), IoSlice::new(&[])][..]] {
            let written = poll_write_parts(&mut io, parts, &mut cx);
            assert!(matches!(written, Poll::Ready(Ok(0))));
        }
        assert!(io.taken.is_empty());
    }

    /// A socket whose plain write writes two parts through [`poll_write_parts`] to another,
    /// while the thread's buffer is still lent to the outer write.
    struct Nested(Recorder);

    impl AsyncWrite for Nested {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let (first, rest) = buf.split_at(1);
            poll_write_parts(&mut self.0, &[IoSlice::new(first), IoSlice::new(rest)], cx)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_write_under_a_gathered_one_goes_as_it_is() {
        let mut io = Nested(Recorder::new(usize::MAX));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let parts = [IoSlice::new(b"ab"), IoSlice::new(b"cdef")];
        let written = poll_write_parts(&mut io, &parts, &mut cx);
        assert!(matches!(written, Poll::Ready(Ok(6))));
        assert_eq!(io.0.taken, b"abcdef");
        assert_eq!((io.0.plain, io.0.vectored), (0, 1));
    }

    #[test]
    fn a_short_write_of_gathered_parts_leaves_the_rest_in_order() {
        let parts: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        // 37 bytes a write: each ends inside a part, and the rest is gathered again.
        let io = write_all(37, &parts);
        assert_eq!(io.taken, parts.concat());
        assert_eq!(io.vectored, 0);
        assert_eq!(io.plain, parts.concat().len().div_ceil(37));
    }
}
