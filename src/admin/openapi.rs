//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::keys;

/// The admin API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "keygate admin API", description = "Manage API keys: create (the key is shown once), list, update, pause, resume, revoke, rotate; usage and audit log. Authenticate with `Authorization: Bearer <key with the admin scope>`."),
    paths(keys::create, keys::list, keys::show, keys::update, keys::pause, keys::resume, keys::revoke, keys::rotate, keys::usage, keys::audit),
    modifiers(&BearerAuth, &OptionalRotateBody),
    tags((name = "keys", description = "API keys"), (name = "audit", description = "Who changed what"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A keygate key holding the `admin` scope"))
                    .build(),
            ),
        );
    }
}

/// `POST /v1/keys/{id}/rotate` takes no body, or a `RotateKey` object (not `null`).
struct OptionalRotateBody;

impl Modify for OptionalRotateBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let body = openapi
            .paths
            .paths
            .get_mut("/v1/keys/{id}/rotate")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut());
        if let Some(utoipa::openapi::RefOr::T(body)) = body {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}
