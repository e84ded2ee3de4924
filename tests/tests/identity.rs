//! The identity service end to end, through the generated tonic clients, on SQLite and Postgres.

use rally_client::Bearer;
use rally_e2e::{TestServer, on_both_backends};
use rally_proto::identity::v1::identity_client::IdentityClient;
use rally_proto::identity::v1::*;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Authed = IdentityClient<InterceptedService<Channel, Bearer>>;

async fn anonymous(server: &TestServer) -> IdentityClient<Channel> {
    IdentityClient::new(server.channel().await)
}

async fn authed(server: &TestServer, access_token: &str) -> Authed {
    IdentityClient::with_interceptor(
        server.channel().await,
        Bearer::new(access_token).expect("token is ASCII"),
    )
}

async fn register(server: &TestServer, username: &str, password: &str) -> AuthSession {
    anonymous(server)
        .await
        .register(RegisterRequest {
            username: username.into(),
            password: password.into(),
            display_name: String::new(),
        })
        .await
        .expect("register")
        .into_inner()
        .session
        .expect("session")
}

fn login(username: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: username.into(),
        password: password.into(),
    }
}

fn refresh(token: &str) -> RefreshRequest {
    RefreshRequest {
        refresh_token: token.into(),
    }
}

async fn register_login_get_account_and_user(server: &TestServer) {
    let session = register(server, "Alice", "correct horse battery").await;
    let user = session.user.clone().expect("user");
    assert_eq!(user.username, "Alice");
    assert_eq!(user.display_name, "Alice");
    assert!(uuid::Uuid::parse_str(&user.user_id).is_ok());
    assert!(!session.access_token.is_empty() && !session.refresh_token.is_empty());
    let access_expiry = session.access_token_expires_at.expect("expiry").seconds;
    let refresh_expiry = session.refresh_token_expires_at.expect("expiry").seconds;
    assert!(refresh_expiry > access_expiry);

    // Login is case-insensitive on the username and opens a new session.
    let mut client = anonymous(server).await;
    let second = client
        .login(login("alice", "correct horse battery"))
        .await
        .expect("login")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(
        second.user.as_ref().map(|u| &u.user_id),
        Some(&user.user_id)
    );
    assert_ne!(second.session_id, session.session_id);

    let mut me = authed(server, &second.access_token).await;
    let account = me
        .get_account(GetAccountRequest {})
        .await
        .expect("account")
        .into_inner();
    assert_eq!(
        account.user.as_ref().map(|u| &u.user_id),
        Some(&user.user_id)
    );
    assert!(account.has_password);
    assert_eq!(account.device_count, 0);
    assert_eq!(account.session_id, second.session_id);

    let fetched = me
        .get_user(GetUserRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .expect("get user")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(fetched, user);
}

async fn unknown_user_and_wrong_password_get_the_same_answer(server: &TestServer) {
    register(server, "bob", "bobs password").await;
    let mut client = anonymous(server).await;
    let wrong = client
        .login(login("bob", "not bobs password"))
        .await
        .expect_err("wrong password");
    let unknown = client
        .login(login("nobody", "whatever123"))
        .await
        .expect_err("unknown user");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(wrong.message(), "invalid username or password");
}

async fn duplicate_usernames_are_refused_whatever_their_case(server: &TestServer) {
    register(server, "carol", "carols password").await;
    let mut client = anonymous(server).await;
    for name in ["carol", "CAROL", "Carol"] {
        let status = client
            .register(RegisterRequest {
                username: name.into(),
                password: "another password".into(),
                display_name: String::new(),
            })
            .await
            .expect_err("duplicate");
        assert_eq!(status.code(), Code::AlreadyExists, "{name}: {status:?}");
    }
    // The first account still signs in with its own password only.
    client
        .login(login("carol", "carols password"))
        .await
        .expect("original password");
    assert_eq!(
        client
            .login(login("carol", "another password"))
            .await
            .expect_err("duplicate's password")
            .code(),
        Code::Unauthenticated
    );
}

async fn bad_input_is_invalid_argument_with_a_clear_message(server: &TestServer) {
    let mut client = anonymous(server).await;
    let long_password = "p".repeat(1025);
    let long_name = "n".repeat(33);
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("", "password123", "", "username"),
        ("ab", "password123", "", "username"),
        (&long_name, "password123", "", "username"),
        ("-dash", "password123", "", "username"),
        ("sp ace", "password123", "", "username"),
        ("émile", "password123", "", "username"),
        ("dave", "", "", "password"),
        ("dave", "short", "", "password"),
        ("dave", &long_password, "", "password"),
        ("dave", "password123", "bell\u{7}", "display_name"),
        ("dave", "password123", "   ", "display_name"),
    ];
    for (username, password, display_name, field) in cases {
        let status = client
            .register(RegisterRequest {
                username: username.into(),
                password: password.into(),
                display_name: display_name.into(),
            })
            .await
            .expect_err("bad input");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{username:?}: {status:?}"
        );
        assert!(
            status.message().starts_with(field),
            "{username:?}: message {:?} should name {field}",
            status.message()
        );
    }
    // Nothing was half-written: the valid name used above is still free.
    register(server, "dave", "password123").await;

    for device_id in ["short", &"d".repeat(129), "has space 0123456789"] {
        let status = client
            .device_login(DeviceLoginRequest {
                device_id: device_id.into(),
                display_name: String::new(),
            })
            .await
            .expect_err("bad device id");
        assert_eq!(status.code(), Code::InvalidArgument, "{device_id:?}");
    }
    let status = client
        .login(login("x", "password123"))
        .await
        .expect_err("bad username");
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn device_login_finds_the_same_account_every_time(server: &TestServer) {
    let mut client = anonymous(server).await;
    let request = DeviceLoginRequest {
        device_id: "quest-3-serial-0001-abcdef".into(),
        display_name: "Eve".into(),
    };
    let first = client
        .device_login(request.clone())
        .await
        .expect("first")
        .into_inner();
    assert!(first.created);
    let second = client
        .device_login(DeviceLoginRequest {
            display_name: "Ignored".into(),
            ..request
        })
        .await
        .expect("second")
        .into_inner();
    assert!(!second.created);
    let (a, b) = (
        first.session.expect("session").user.expect("user"),
        second.session.clone().expect("session").user.expect("user"),
    );
    assert_eq!(a, b);
    assert_eq!(a.display_name, "Eve");
    assert_eq!(a.username, "");

    let other = client
        .device_login(DeviceLoginRequest {
            device_id: "another-device-000000".into(),
            display_name: String::new(),
        })
        .await
        .expect("other")
        .into_inner();
    let other_user = other.session.expect("session").user.expect("user");
    assert_ne!(other_user.user_id, a.user_id);
    assert!(other_user.display_name.starts_with("player-"));

    let account = authed(server, &second.session.expect("session").access_token)
        .await
        .get_account(GetAccountRequest {})
        .await
        .expect("account")
        .into_inner();
    assert!(!account.has_password);
    assert_eq!(account.device_count, 1);
}

async fn refresh_rotates_and_reuse_revokes_the_session(server: &TestServer) {
    let first = register(server, "frank", "franks password").await;
    let mut client = anonymous(server).await;
    let second = client
        .refresh(refresh(&first.refresh_token))
        .await
        .expect("rotate")
        .into_inner()
        .session
        .expect("session");
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(second.user, first.user);
    // The new access token works.
    authed(server, &second.access_token)
        .await
        .get_account(GetAccountRequest {})
        .await
        .expect("new access token");

    // The old refresh token again: reuse. It is refused, and so is the newest one now.
    let reuse = client
        .refresh(refresh(&first.refresh_token))
        .await
        .expect_err("reuse");
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert!(reuse.message().contains("already used"), "{reuse:?}");
    let after = client
        .refresh(refresh(&second.refresh_token))
        .await
        .expect_err("family revoked");
    assert_eq!(after.code(), Code::Unauthenticated);
    assert!(after.message().contains("revoked"), "{after:?}");

    // Another session of the same user is untouched.
    let other = client
        .login(login("frank", "franks password"))
        .await
        .expect("login")
        .into_inner()
        .session
        .expect("session");
    client
        .refresh(refresh(&other.refresh_token))
        .await
        .expect("other session still refreshes");
}

async fn malformed_and_unknown_refresh_tokens_are_unauthenticated(server: &TestServer) {
    let mut client = anonymous(server).await;
    let unknown = "A".repeat(43);
    for token in [
        "",
        "garbage",
        &unknown,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
    ] {
        let status = client.refresh(refresh(token)).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
}

async fn logout_revokes_this_session_or_all(server: &TestServer) {
    let one = register(server, "grace", "graces password").await;
    let mut client = anonymous(server).await;
    let two = client
        .login(login("grace", "graces password"))
        .await
        .expect("login")
        .into_inner()
        .session
        .expect("session");
    let three = client
        .login(login("grace", "graces password"))
        .await
        .expect("login")
        .into_inner()
        .session
        .expect("session");

    let revoked = authed(server, &one.access_token)
        .await
        .logout(LogoutRequest {
            all_sessions: false,
        })
        .await
        .expect("logout")
        .into_inner();
    assert_eq!(revoked.revoked_sessions, 1);
    let status = client
        .refresh(refresh(&one.refresh_token))
        .await
        .expect_err("logged out");
    assert_eq!(status.code(), Code::Unauthenticated);
    let two = client
        .refresh(refresh(&two.refresh_token))
        .await
        .expect("session two lives")
        .into_inner()
        .session
        .expect("session");

    let revoked = authed(server, &three.access_token)
        .await
        .logout(LogoutRequest { all_sessions: true })
        .await
        .expect("logout all")
        .into_inner();
    assert_eq!(revoked.revoked_sessions, 2);
    for token in [&two.refresh_token, &three.refresh_token] {
        assert_eq!(
            client
                .refresh(refresh(token))
                .await
                .expect_err("revoked")
                .code(),
            Code::Unauthenticated
        );
    }
}

async fn get_user_answers_not_found_and_invalid_argument(server: &TestServer) {
    let session = register(server, "heidi", "heidis password").await;
    let mut me = authed(server, &session.access_token).await;
    let status = me
        .get_user(GetUserRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = me
        .get_user(GetUserRequest {
            user_id: "not-a-uuid".into(),
        })
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
}

on_both_backends!(
    register_login_get_account_and_user,
    unknown_user_and_wrong_password_get_the_same_answer,
    duplicate_usernames_are_refused_whatever_their_case,
    bad_input_is_invalid_argument_with_a_clear_message,
    device_login_finds_the_same_account_every_time,
    refresh_rotates_and_reuse_revokes_the_session,
    malformed_and_unknown_refresh_tokens_are_unauthenticated,
    logout_revokes_this_session_or_all,
    get_user_answers_not_found_and_invalid_argument,
);
