//! The tonic codec both OTLP/gRPC receivers serve with (the collector's `MetricsService/Export`,
//! the agent's `TraceService/Export`): prost's encoder for the response, and a decoder that hands
//! the message to [`super::decode`], so a message whose estimate exceeds the bound is refused
//! (`RESOURCE_EXHAUSTED`) before prost decodes a byte of it, as OTLP/HTTP bodies are. tonic still
//! frames the message, decompresses it (gzip) and bounds its size; each service keeps its own
//! routing, authentication and handler, and is told of every refusal to count it.
//!
//! Why here, behind the `grpc` feature (off by default), rather than in a crate of its own: the
//! codec is a few lines of glue whose only logic is [`super::decode`], and it belongs next to it
//! (one place to read how an OTLP message is bounded). tonic depends on tokio, which core's
//! default build must not (`cargo tree -p scalewise-core` shows none); the agent and the collector,
//! which already link tonic, turn the feature on. A separate crate would have kept core free of
//! the optional dependency, at the price of a workspace member for one module.

use std::marker::PhantomData;

use prost::bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::{decode, DecodeError, Encoding};

/// The gRPC status of a refusal: `RESOURCE_EXHAUSTED` over the estimate, `INVALID_ARGUMENT` for
/// a message that does not decode.
pub fn status(e: &DecodeError) -> Status {
    match e {
        DecodeError::TooLarge { estimate, limit } => Status::resource_exhausted(format!(
            "message would take about {estimate} bytes once decoded (limit {limit}): split the export into smaller requests"
        )),
        DecodeError::Protobuf(_) | DecodeError::Json(_) => Status::invalid_argument(e.to_string()),
    }
}

/// A unary codec decoding `Req` within `max_decoded` bytes (estimated) and encoding `Resp`;
/// `refused` is called with every refusal (to count it) before the status goes back.
pub struct BoundedCodec<Req, Resp, F> {
    max_decoded: usize,
    refused: F,
    _types: PhantomData<fn(Resp) -> Req>,
}

impl<Req, Resp, F> BoundedCodec<Req, Resp, F>
where
    F: Fn(&DecodeError),
{
    pub fn new(max_decoded: usize, refused: F) -> Self {
        BoundedCodec {
            max_decoded,
            refused,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp, F> Codec for BoundedCodec<Req, Resp, F>
where
    Req: prost::Message + Default + serde::de::DeserializeOwned + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(&DecodeError) + Clone + Send + 'static,
{
    type Encode = Resp;
    type Decode = Req;
    type Encoder = ProstEncoder<Resp>;
    type Decoder = BoundedDecoder<Req, F>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            max_decoded: self.max_decoded,
            refused: self.refused.clone(),
            _types: PhantomData,
        }
    }
}

/// prost's encoding of the response.
pub struct ProstEncoder<T>(PhantomData<fn(T)>);

impl<T: prost::Message> Encoder for ProstEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

/// [`decode`] of each (decompressed) message.
pub struct BoundedDecoder<T, F> {
    max_decoded: usize,
    refused: F,
    _types: PhantomData<fn() -> T>,
}

impl<T, F> Decoder for BoundedDecoder<T, F>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
    F: Fn(&DecodeError),
{
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        // tonic hands over one whole message, in one chunk in practice; copied when not.
        let copy;
        let bytes: &[u8] = if buf.chunk().len() == buf.remaining() {
            buf.chunk()
        } else {
            copy = buf.copy_to_bytes(buf.remaining());
            &copy
        };
        match decode::<T>(bytes, Encoding::Protobuf, self.max_decoded) {
            Ok(item) => {
                let consumed = buf.remaining();
                buf.advance(consumed);
                Ok(Some(item))
            }
            Err(e) => {
                (self.refused)(&e);
                Err(status(&e))
            }
        }
    }
}
