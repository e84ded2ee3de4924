//! The tower layer that authenticates every gRPC call before it reaches a service.
//!
//! Deny by default: a call is let through without a token only when its path is listed in
//! [`PublicMethods`]; every other path, including ones no service serves, needs a valid access
//! token. The verified [`Caller`] is put into the request's extensions, where tonic hands it to
//! the handler ([`Caller::of`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::{AUTHORIZATION, Caller, TokenVerifier};

/// The gRPC paths that need no access token.
#[derive(Debug, Clone, Default)]
pub struct PublicMethods {
    methods: HashSet<String>,
    services: HashSet<String>,
}

impl PublicMethods {
    /// Lets one method through without a token, by its full path
    /// (`/rally.identity.v1.Identity/Login`).
    pub fn method(mut self, path: impl Into<String>) -> Self {
        self.methods.insert(path.into());
        self
    }

    /// Lets every method of a service through without a token, by its full name
    /// (`grpc.health.v1.Health`).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.services.insert(name.into());
        self
    }

    /// Whether the call at `path` needs no token.
    pub fn is_public(&self, path: &str) -> bool {
        if self.methods.contains(path) {
            return true;
        }
        path.strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, _)| self.services.contains(service))
    }
}

/// Authenticates calls with a [`TokenVerifier`]; see the module docs.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    public: Arc<PublicMethods>,
}

impl AuthLayer {
    /// A layer that verifies tokens with `verifier` and lets `public` through without one.
    pub fn new(verifier: Arc<TokenVerifier>, public: PublicMethods) -> Self {
        Self {
            verifier,
            public: Arc::new(public),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
            public: self.public.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
    public: Arc<PublicMethods>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // A caller must never smuggle its own identity in.
        request.extensions_mut().remove::<Caller>();
        if self.public.is_public(request.uri().path()) {
            return Either::Right(self.inner.call(request));
        }
        match self
            .verifier
            .verify_authorization(request.headers().get(AUTHORIZATION))
        {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(error) => {
                tracing::debug!(path = request.uri().path(), %error, "call refused");
                let status = tonic::Status::unauthenticated(error.to_string());
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_methods_match_exact_paths_and_whole_services_only() {
        let public = PublicMethods::default()
            .method("/rally.identity.v1.Identity/Login")
            .service("grpc.health.v1.Health");
        assert!(public.is_public("/rally.identity.v1.Identity/Login"));
        assert!(!public.is_public("/rally.identity.v1.Identity/LoginX"));
        assert!(!public.is_public("/rally.identity.v1.Identity/GetAccount"));
        assert!(public.is_public("/grpc.health.v1.Health/Check"));
        assert!(public.is_public("/grpc.health.v1.Health/Watch"));
        assert!(!public.is_public("/grpc.health.v1.HealthX/Check"));
        assert!(!public.is_public("grpc.health.v1.Health/Check"));
        assert!(!public.is_public("/"));
        assert!(!public.is_public(""));
    }
}
