//! The authenticated caller, as handlers see it.

use uuid::Uuid;

/// Who is calling: put into the request by [`crate::AuthLayer`] after the access token checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The signed-in user.
    pub user_id: Uuid,
    /// The session (sign-in) the access token belongs to.
    pub session_id: Uuid,
    /// When the access token expires, seconds since the Unix epoch.
    pub expires_at: i64,
}

impl Caller {
    /// The caller of an authenticated request.
    ///
    /// Fails with `UNAUTHENTICATED` when the request did not pass through the auth layer (a
    /// service mounted without it must not serve anyone).
    ///
    /// ```
    /// # use rally_auth::Caller;
    /// let request = tonic::Request::new(());
    /// assert_eq!(Caller::of(&request).unwrap_err().code(), tonic::Code::Unauthenticated);
    /// ```
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        request
            .extensions()
            .get::<Caller>()
            .copied()
            .ok_or_else(|| tonic::Status::unauthenticated("this call needs an access token"))
    }
}
