//! The gRPC response body of an ADS stream, written straight from the wire types: each message
//! goes out as fresh chunks of at most [`CHUNK`] bytes (large resources as their own shared
//! bytes), so a stream never keeps a buffer the size of its largest push, as tonic's encoder
//! does, and a thousand idle streams hold no push-sized memory.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codegen::http::HeaderMap;

use crate::grpc::ResponseStream;
use crate::wire::{WireDeltaDiscoveryResponse, WireDiscoveryResponse, WireResource};

/// The size of the chunks a message is copied into.
pub const CHUNK: usize = 32 * 1024;
/// Resources at least this large go out as their own (shared) bytes instead of being copied.
const SHARE_FROM: usize = 4 * 1024;

/// Collects a message's bytes as a queue of chunks.
#[derive(Default)]
pub struct Chunks {
    out: VecDeque<Bytes>,
    cur: BytesMut,
}

impl Chunks {
    fn room(&mut self, n: usize) -> &mut BytesMut {
        if self.cur.len() + n > CHUNK && !self.cur.is_empty() {
            self.flush();
        }
        if self.cur.capacity() == 0 {
            self.cur = BytesMut::with_capacity(CHUNK.max(n));
        }
        &mut self.cur
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.out.push_back(std::mem::take(&mut self.cur).freeze());
        }
    }

    fn small(&mut self, bytes: &[u8]) {
        self.room(bytes.len()).put_slice(bytes);
    }

    fn shared(&mut self, bytes: &Bytes) {
        if bytes.len() < SHARE_FROM {
            self.small(bytes);
        } else {
            self.flush();
            self.out.push_back(bytes.clone());
        }
    }

    fn key_len(&mut self, tag: u32, len: usize) {
        let buf = self.room(10 + encoded_len_varint(len as u64));
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }

    fn string(&mut self, tag: u32, s: &str) {
        if !s.is_empty() {
            self.key_len(tag, s.len());
            self.small(s.as_bytes());
        }
    }

    fn bytes_field(&mut self, tag: u32, b: &Bytes) {
        self.key_len(tag, b.len());
        self.shared(b);
    }

    /// The 5-byte gRPC message prefix: uncompressed, then the length.
    fn grpc_prefix(&mut self, len: usize) {
        let buf = self.room(5);
        buf.put_u8(0);
        buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

/// A message that can be written as chunks, field for field as prost encodes it.
pub trait Framed: Message + Sized {
    fn write(&self, out: &mut Chunks);
}

impl Framed for WireDiscoveryResponse {
    fn write(&self, out: &mut Chunks) {
        out.string(1, &self.version_info);
        for r in &self.resources {
            out.bytes_field(2, r);
        }
        out.string(4, &self.type_url);
        out.string(5, &self.nonce);
    }
}

impl Framed for WireResource {
    fn write(&self, out: &mut Chunks) {
        out.string(1, &self.version);
        if !self.resource.is_empty() {
            out.bytes_field(2, &self.resource);
        }
        out.string(3, &self.name);
    }
}

impl Framed for WireDeltaDiscoveryResponse {
    fn write(&self, out: &mut Chunks) {
        out.string(1, &self.system_version_info);
        for r in &self.resources {
            out.key_len(2, r.encoded_len());
            r.write(out);
        }
        out.string(4, &self.type_url);
        out.string(5, &self.nonce);
        for name in &self.removed_resources {
            out.string(6, name);
        }
    }
}

/// Appends one gRPC-framed message to `out`.
fn frame<M: Framed>(msg: &M, out: &mut Chunks) {
    out.grpc_prefix(msg.encoded_len());
    msg.write(out);
    out.flush();
}

/// The response body: the stream's messages as chunks, then trailers with the status that
/// ended it (`OK` when it simply ends).
pub struct GrpcBody<M> {
    stream: ResponseStream<M>,
    chunks: Chunks,
    done: bool,
}

impl<M> GrpcBody<M> {
    pub fn new(stream: ResponseStream<M>) -> Self {
        Self {
            stream,
            chunks: Chunks::default(),
            done: false,
        }
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    // A status whose message cannot be a header still ends the stream with its code.
    if status.add_header(&mut map).is_err() {
        let _ = Status::new(status.code(), "").add_header(&mut map);
    }
    map
}

impl<M: Framed + Send + 'static> http_body::Body for GrpcBody<M> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(chunk) = this.chunks.out.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this.stream.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(msg))) => {
                frame(&msg, &mut this.chunks);
                let chunk = this.chunks.out.pop_front().expect("a message has a prefix");
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(status))) => {
                this.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;
    use proptest::prelude::*;

    use super::*;
    use crate::wire::encode_any;

    fn framed<M: Framed>(msg: &M) -> Vec<u8> {
        let mut c = Chunks::default();
        frame(msg, &mut c);
        c.out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    fn prost_framed<M: Message>(msg: &M) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    fn any(len: usize) -> Bytes {
        encode_any(&Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![7; len],
        })
    }

    proptest! {
        /// The chunks are byte for byte what prost encodes, with gRPC's length prefix.
        #[test]
        fn chunks_are_exactly_the_prost_encoding(
            sizes in proptest::collection::vec(0usize..40_000, 0..12),
            version in "[a-z0-9-]{0,20}",
            removed in proptest::collection::vec("[a-z|.]{1,30}", 0..4),
        ) {
            let sotw = WireDiscoveryResponse {
                version_info: version.clone(),
                resources: sizes.iter().map(|n| any(*n)).collect(),
                type_url: "type.googleapis.com/x.Y".into(),
                nonce: "n-1".into(),
            };
            prop_assert_eq!(framed(&sotw), prost_framed(&sotw));
            let delta = WireDeltaDiscoveryResponse {
                system_version_info: version,
                resources: sizes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| WireResource {
                        version: format!("v{i}").into(),
                        resource: any(*n),
                        name: format!("r{i}").into(),
                    })
                    .collect(),
                type_url: "type.googleapis.com/x.Y".into(),
                nonce: "n-2".into(),
                removed_resources: removed,
            };
            prop_assert_eq!(framed(&delta), prost_framed(&delta));
        }
    }

    #[test]
    fn no_chunk_outgrows_the_bound_and_large_resources_are_shared() {
        let big = any(100_000);
        let msg = WireDiscoveryResponse {
            version_info: "v".into(),
            resources: vec![any(10); 10_000]
                .into_iter()
                .chain([big.clone()])
                .collect(),
            type_url: "t".into(),
            nonce: "n".into(),
        };
        let mut c = Chunks::default();
        frame(&msg, &mut c);
        assert!(c.out.len() > 10, "a 300 kB message is many chunks");
        assert!(
            c.out.iter().any(|b| b.as_ptr() == big.as_ptr()),
            "shared, not copied"
        );
        assert!(
            c.out
                .iter()
                .filter(|b| b.as_ptr() != big.as_ptr())
                .all(|b| b.len() <= CHUNK)
        );
    }
}
