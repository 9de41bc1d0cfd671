//! The ADS gRPC service, with responses written from resources encoded once ([`crate::wire`])
//! rather than through the generated service (which would make every stream re-copy every
//! resource into a fresh `DiscoveryResponse`). Requests decode as the ordinary protos; the
//! responses are wire-identical to `DiscoveryResponse` and `DeltaDiscoveryResponse`.
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures_core::Stream;
use tonic::codegen::{Body, BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::wire::{WireDeltaDiscoveryResponse, WireDiscoveryResponse};

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

struct Sotw<H>(Arc<H>);

impl<H: AdsHandler> StreamingService<DiscoveryRequest> for Sotw<H> {
    type Response = WireDiscoveryResponse;
    type ResponseStream = ResponseStream<WireDiscoveryResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move { handler.stream(request).await })
    }
}

struct Delta<H>(Arc<H>);

impl<H: AdsHandler> StreamingService<DeltaDiscoveryRequest> for Delta<H> {
    type Response = WireDeltaDiscoveryResponse;
    type ResponseStream = ResponseStream<WireDeltaDiscoveryResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move { handler.delta(request).await })
    }
}

const STREAM_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl<H, B> tonic::codegen::Service<http::Request<B>> for AdsService<H>
where
    H: AdsHandler,
    B: Body + Send + 'static,
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
                let codec = ProstCodec::<WireDiscoveryResponse, DiscoveryRequest>::default();
                Ok(Grpc::new(codec).streaming(Sotw(handler), req).await)
            }),
            DELTA_PATH => Box::pin(async move {
                let codec =
                    ProstCodec::<WireDeltaDiscoveryResponse, DeltaDiscoveryRequest>::default();
                Ok(Grpc::new(codec).streaming(Delta(handler), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}
