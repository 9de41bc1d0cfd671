//! The ADS gRPC service, with responses written from resources encoded once ([`crate::wire`])
//! rather than through the generated service (which would make every stream re-copy every
//! resource into a fresh `DiscoveryResponse`), in bounded chunks ([`crate::frames`]).
//! Requests decode as the ordinary protos; the responses are wire-identical to
//! `DiscoveryResponse` and `DeltaDiscoveryResponse`.
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures_core::Stream;
use tonic::codec::Codec;
use tonic::codegen::{Body, BoxFuture, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::frames::{Framed, GrpcBody};
use crate::wire::{WireDeltaDiscoveryResponse, WireDiscoveryResponse};

/// The largest request accepted (an EDS subscription to 100,000 clusters is about 8 MB).
pub const MAX_REQUEST: usize = 32 << 20;

/// A stream of responses or the status that ends it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What an ADS server does with each stream.
#[tonic::async_trait]
pub trait AdsHandler: Send + Sync + 'static {
    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<WireDiscoveryResponse>>, Status>;

    async fn delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<WireDeltaDiscoveryResponse>>, Status>;
}

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`, served by an [`AdsHandler`].
#[derive(Debug)]
pub struct AdsService<H> {
    handler: Arc<H>,
}

impl<H> Clone for AdsService<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
        }
    }
}

impl<H: AdsHandler> AdsService<H> {
    pub fn new(handler: Arc<H>) -> Self {
        Self { handler }
    }
}

impl<H> NamedService for AdsService<H> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

/// Runs one streaming call: requests decoded by tonic, the handler's responses written by
/// [`GrpcBody`], a refusal as a trailers-only response.
async fn streaming<Req, Resp, B, F, Fut>(
    req: http::Request<B>,
    handler: F,
) -> http::Response<tonic::body::Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: Framed + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    F: FnOnce(Request<Streaming<Req>>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<ResponseStream<Resp>>, Status>>,
{
    if let Some(enc) = req.headers().get("grpc-encoding")
        && enc.as_bytes() != b"identity"
    {
        return Status::unimplemented(format!(
            "request compression {:?} is not supported",
            String::from_utf8_lossy(enc.as_bytes())
        ))
        .into_http();
    }
    let decoder = ProstCodec::<Resp, Req>::default().decoder();
    let req = req.map(|body| Streaming::new_request(decoder, body, None, Some(MAX_REQUEST)));
    match handler(Request::from_http(req)).await {
        Err(status) => status.into_http(),
        Ok(resp) => {
            let (metadata, stream, _) = resp.into_parts();
            let mut http = http::Response::new(tonic::body::Body::new(GrpcBody::new(stream)));
            *http.headers_mut() = metadata.into_headers();
            http.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            http
        }
    }
}

const STREAM_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl<H, B> tonic::codegen::Service<http::Request<B>> for AdsService<H>
where
    H: AdsHandler,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let handler = self.handler.clone();
        match req.uri().path() {
            STREAM_PATH => Box::pin(async move {
                Ok(
                    streaming::<DiscoveryRequest, WireDiscoveryResponse, _, _, _>(
                        req,
                        |r| async move { handler.stream(r).await },
                    )
                    .await,
                )
            }),
            DELTA_PATH => Box::pin(async move {
                Ok(
                    streaming::<DeltaDiscoveryRequest, WireDeltaDiscoveryResponse, _, _, _>(
                        req,
                        |r| async move { handler.delta(r).await },
                    )
                    .await,
                )
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}
