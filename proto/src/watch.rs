//! The node's Watch call with a codec that hands over each update's raw bytes: the generated
//! client decodes with prost, which drops unknown fields before anyone can see them
//! (CONFORMANCE G.43). The node decodes with [`crate::validate::decode_update`].

use prost::bytes::Buf;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, Streaming};
use tonic::transport::Channel;
use tonic::{IntoStreamingRequest, Status};
use tonic_prost::ProstEncoder;

use crate::pb;

/// One update as it came off the stream, not decoded yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawUpdate(pub Vec<u8>);

/// Encodes requests with prost; keeps responses as bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawUpdateCodec;

impl Codec for RawUpdateCodec {
    type Encode = pb::WatchRequest;
    type Decode = RawUpdate;
    type Encoder = ProstEncoder<pb::WatchRequest>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = RawUpdate;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<RawUpdate>, Status> {
        Ok(Some(RawUpdate(buf.copy_to_bytes(buf.remaining()).to_vec())))
    }
}

/// `osgate.v1.Fleet/Watch`, as the generated client calls it, with [`RawUpdateCodec`].
pub async fn watch(
    channel: Channel,
    requests: impl IntoStreamingRequest<Message = pb::WatchRequest>,
) -> Result<Streaming<RawUpdate>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("the control plane is not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/osgate.v1.Fleet/Watch");
    let mut request = requests.into_streaming_request();
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("osgate.v1.Fleet", "Watch"));
    grpc.streaming(request, path, RawUpdateCodec)
        .await
        .map(tonic::Response::into_inner)
}
