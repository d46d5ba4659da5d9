//! `/v1/keys` and `/v1/audit`: key management over HTTP. Every handler confines an
//! org admin to its org (other orgs' keys are 404, never revealed) and goes through
//! `manage`, which audit-logs and invalidates caches on every replica.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::State;
use super::auth::Admin;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::keys::{KeyRecord, McpPolicy, Owner, Rate, Restrictions, Status};
use crate::manage::NewKey;
use crate::store::{ListQuery, Patch};

// The schema spells out what the server accepts (patterns are ECMA-262 regexes):
// a name holds a character that is not white space (as `char::is_whitespace`
// has it); an owner is `user:<id>` or `org:<id>` (`Owner::parse`); an environment
// is `keys::format::is_valid_name` without underscores; an org id has no `/`.

/// A scope, as `crate::keys::is_valid_scope` has it.
const SCOPE_PATTERN: &str = r"^[a-z0-9_.:-]{1,64}$";
/// The longest rotation overlap: 366 days.
const MAX_OVERLAP_SECONDS: u64 = 366 * 86_400;

/// An array of `item`s, `null` allowed when `nullable`.
fn list_schema(
    item: utoipa::openapi::schema::ObjectBuilder,
    nullable: bool,
    description: &str,
) -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::{ArrayBuilder, SchemaType, Type};
    let ty = if nullable {
        SchemaType::from_iter([Type::Array, Type::Null])
    } else {
        SchemaType::new(Type::Array)
    };
    ArrayBuilder::new()
        .schema_type(ty)
        .items(item)
        .description(Some(description))
}

/// A list of scopes, each matching [`SCOPE_PATTERN`].
fn scopes_schema(nullable: bool, description: &str) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(64))
        .pattern(Some(SCOPE_PATTERN));
    list_schema(item, nullable, description).build()
}

/// An IP allowlist entry: an IPv4 or IPv6 address or CIDR network, as
/// `keys::record::parse_network` accepts it (IPv6 without an embedded IPv4 part).
const NETWORK_PATTERN: &str = concat!(
    r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}(/(3[0-2]|[12]?[0-9]))?",
    r"|(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
    r"|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
    r"|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
    r"|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$",
);
/// A rate, as `keys::Rate::parse` accepts it.
const RATE_PATTERN: &str = r"^[1-9][0-9]{0,5}/(s|m|h)$";
/// Most entries in one IP allowlist.
const MAX_ALLOWED_IPS: usize = 100;

fn allowed_ips_schema(nullable: bool) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NETWORK_PATTERN));
    list_schema(
        item,
        nullable,
        "Addresses or CIDR networks (IPv4, IPv6) the key may be used from; empty = any. \
         The client address is the socket peer, or what a `[clients] trusted_proxies` hop reported.",
    )
    .max_items(Some(MAX_ALLOWED_IPS))
    .build()
}

fn optional_allowed_ips_schema() -> utoipa::openapi::schema::Array {
    allowed_ips_schema(true)
}

fn allowed_ips_list_schema() -> utoipa::openapi::schema::Array {
    allowed_ips_schema(false)
}

fn rate_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(RATE_PATTERN))
        .description(Some(
            "Short-window rate limit, `N/s`, `N/m` or `N/h` (N from 1 to 999999): a burst of N, \
             refilled continuously. `null` = the configured `[rate_limit] per_key`.",
        ))
        .build()
}

/// Parses an allowlist from the API.
fn networks(list: &[String]) -> Result<Vec<ipnet::IpNet>, ApiError> {
    if list.len() > MAX_ALLOWED_IPS {
        return Err(ApiError::invalid(format!(
            "allowed_ips holds at most {MAX_ALLOWED_IPS} entries"
        )));
    }
    list.iter()
        .map(|n| {
            crate::keys::record::parse_network(n).map_err(|e| ApiError::invalid(format!("allowed_ips: {e}")))
        })
        .collect()
}

/// Parses a rate from the API.
fn rate(s: &str) -> Result<Rate, ApiError> {
    Rate::parse(s).map_err(|e| ApiError::invalid(format!("rate_limit: {e}")))
}

fn optional_scopes_schema() -> utoipa::openapi::schema::Array {
    scopes_schema(
        true,
        "Scopes, each 1-64 characters of `a-z`, `0-9`, `_`, `-`, `.`, `:`; default on create `[\"read\"]`.",
    )
}

fn scopes_list_schema() -> utoipa::openapi::schema::Array {
    scopes_schema(false, "Granted scopes.")
}

/// The `status` filter of `GET /v1/keys`: a status, or empty for any.
fn status_filter_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["", "active", "paused", "expired", "revoked"]))
        .description(Some("`active`, `paused`, `expired` or `revoked`; empty = any."))
        .build()
}

/// A key's status, as shown.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Paused; `resume` makes it usable again.
    Paused,
    /// Past its `expires_at`.
    Expired,
    /// Revoked (irreversible).
    Revoked,
}

/// A non-negative JSON integer that fits an `i64`. JSON Schema counts `165.0` as
/// an integer too, so an integral float is taken as well (`1e3` = 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// 2^63, exactly: the first float past `i64::MAX`.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        let n = serde_json::Number::deserialize(d)?;
        let value = match n.as_u64() {
            Some(u) => i64::try_from(u).is_ok().then_some(u),
            None => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..LIMIT).contains(f))
                // Checked just above: integral and in range.
                .map(|f| f as u64),
        };
        value.map(Self).ok_or_else(|| {
            serde::de::Error::custom(format!("`{n}` is not an integer from 0 to {}", i64::MAX))
        })
    }
}

/// Limits a key carries beyond its scopes. Accepted only as a JSON object (serde
/// would otherwise also read a struct from an array).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, try_from = "JsonObject")]
pub struct RestrictionsBody {
    /// Only GET, HEAD and OPTIONS.
    #[serde(default)]
    pub read_only: bool,
    /// Route names the key may use; empty = all.
    #[serde(default)]
    pub routes: Vec<String>,
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictionsFields {
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    routes: Vec<String>,
}

impl TryFrom<JsonObject> for RestrictionsBody {
    type Error = serde_json::Error;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let f: RestrictionsFields = serde_json::from_value(serde_json::Value::Object(object))?;
        Ok(Self {
            read_only: f.read_only,
            routes: f.routes,
        })
    }
}

impl From<RestrictionsBody> for Restrictions {
    fn from(r: RestrictionsBody) -> Self {
        Self {
            read_only: r.read_only,
            routes: r.routes,
            ..Self::default()
        }
    }
}

/// What a key may do on MCP routes. Accepted only as a JSON object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, try_from = "JsonObject")]
pub struct McpBody {
    /// MCP paused for this key (REST routes still work).
    #[serde(default)]
    pub disabled: bool,
    /// Tools the key may see and call, exact names and `*` globs; empty = all.
    #[serde(default)]
    #[schema(schema_with = mcp_tools_schema)]
    pub tools: Vec<String>,
    /// Only read-only tools.
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpFields {
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    read_only: bool,
}

impl TryFrom<JsonObject> for McpBody {
    type Error = serde_json::Error;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let f: McpFields = serde_json::from_value(serde_json::Value::Object(object))?;
        Ok(Self {
            disabled: f.disabled,
            tools: f.tools,
            read_only: f.read_only,
        })
    }
}

impl From<McpBody> for McpPolicy {
    fn from(m: McpBody) -> Self {
        Self {
            disabled: m.disabled,
            tools: m.tools,
            read_only: m.read_only,
        }
    }
}

impl From<&McpPolicy> for McpBody {
    fn from(m: &McpPolicy) -> Self {
        Self {
            disabled: m.disabled,
            tools: m.tools.clone(),
            read_only: m.read_only,
        }
    }
}

fn mcp_tools_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[A-Za-z0-9_./:*-]{1,128}$"));
    list_schema(item, false, "Tools (exact names and `*` globs); empty = all.")
        .max_items(Some(100))
        .build()
}

/// A key as the API shows it (never the key itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    /// Key id.
    pub id: Uuid,
    /// Human label.
    pub name: String,
    /// Display prefix, e.g. `kg_live_8f760b49`.
    pub prefix: String,
    /// Organisation, if bound to one.
    pub org_id: Option<String>,
    /// `user:<id>` or `org:<id>`.
    pub owner: String,
    /// Environment (`live`, `test`, ...).
    pub environment: String,
    /// Granted scopes.
    #[schema(schema_with = scopes_list_schema)]
    pub scopes: Vec<String>,
    /// Further limits.
    pub restrictions: RestrictionsBody,
    /// Addresses or networks the key may be used from; empty = any.
    #[schema(schema_with = allowed_ips_list_schema)]
    pub allowed_ips: Vec<String>,
    /// The key's own rate limit (`10/s`), when it overrides `[rate_limit] per_key`.
    #[schema(schema_with = rate_schema)]
    pub rate_limit: Option<String>,
    /// What the key may do on MCP routes.
    pub mcp: McpBody,
    /// Quota per period, when it overrides the default.
    pub quota: Option<u64>,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// `active`, `paused`, `expired` or `revoked`.
    #[schema(value_type = KeyStatus)]
    pub status: String,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (batched; up to a few seconds behind).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was (or will be) revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyView {
    /// The view of `r` at `now`.
    pub fn of(r: &KeyRecord, now: DateTime<Utc>) -> Self {
        Self {
            id: r.id,
            name: r.name.clone(),
            prefix: r.display_prefix.clone(),
            org_id: r.org_id.clone(),
            owner: r.owner.to_tag(),
            environment: r.environment.clone(),
            scopes: r.scopes.clone(),
            restrictions: RestrictionsBody {
                read_only: r.restrictions.read_only,
                routes: r.restrictions.routes.clone(),
            },
            allowed_ips: r
                .restrictions
                .allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect(),
            rate_limit: r.restrictions.rate_limit.map(|r| r.to_string()),
            mcp: (&r.restrictions.mcp).into(),
            quota: r.quota_limit,
            metadata: r.metadata.clone(),
            status: r.status(now).as_str().to_owned(),
            created_by: r.created_by.clone(),
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// A new key: shown exactly this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    /// The plaintext key. keygate stores only its SHA-256 hash; it is never shown again.
    pub key: String,
    /// The key's record.
    #[serde(flatten)]
    pub view: KeyView,
    /// For a rotation: the key this one replaces, and when that one stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Replaced>,
}

/// The key a rotation replaced.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replaced {
    /// Its id.
    pub id: Uuid,
    /// When it stops (or stopped) working.
    pub revoked_at: DateTime<Utc>,
}

/// `POST /v1/keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Human label (1-200 characters, not only white space, no NUL).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000]*$"
    )]
    pub name: String,
    /// Organisation (1-200 characters, no `/`); an org admin's own org by default
    /// (and the only one allowed).
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^/\u0000]*$")]
    pub org: Option<String>,
    /// `user:<id>` or `org:<id>`; default: the org, else the admin key's name.
    #[schema(pattern = r"^(user|org):[^\u0000]+$")]
    pub owner: Option<String>,
    /// Scopes (each 1-64 characters of `a-z`, `0-9`, `_`, `-`, `.`, `:`); default `["read"]`.
    #[schema(schema_with = optional_scopes_schema)]
    pub scopes: Option<Vec<String>>,
    /// Environment (1-32 characters of `a-z` and `0-9`); default: the deployment's.
    #[schema(pattern = r"^[a-z0-9]{1,32}$")]
    pub environment: Option<String>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Quota per period instead of the default.
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub quota: Option<Count>,
    /// Restrictions.
    pub restrictions: Option<RestrictionsBody>,
    /// Addresses or CIDR networks the key may be used from; absent or empty = any.
    #[schema(schema_with = optional_allowed_ips_schema)]
    pub allowed_ips: Option<Vec<String>>,
    /// The key's own rate limit (`10/s`, `600/m`, `1000/h`); absent = `[rate_limit] per_key`.
    #[schema(schema_with = rate_schema)]
    pub rate_limit: Option<String>,
    /// What the key may do on MCP routes; absent = everything.
    pub mcp: Option<McpBody>,
    /// A JSON object stored with the key.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `PATCH /v1/keys/{id}` body: absent fields stay; `null` clears `quota`/`expires_at`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// New name (1-200 characters, not only white space).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000]*$"
    )]
    pub name: Option<String>,
    /// New scopes.
    #[schema(schema_with = optional_scopes_schema)]
    pub scopes: Option<Vec<String>>,
    /// New quota; `null` = back to the default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub quota: Option<Option<Count>>,
    /// New expiry; `null` = never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// New read-only flag and route allowlist (the IP allowlist and rate limit
    /// stay unless given below).
    pub restrictions: Option<RestrictionsBody>,
    /// New IP allowlist; `[]` = any address.
    #[schema(schema_with = optional_allowed_ips_schema)]
    pub allowed_ips: Option<Vec<String>>,
    /// New rate limit; `null` = back to `[rate_limit] per_key`.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = rate_schema)]
    pub rate_limit: Option<Option<String>>,
    /// New MCP policy (replaces the whole policy).
    pub mcp: Option<McpBody>,
    /// New metadata (a JSON object).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /v1/keys/{id}/rotate` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Keep the old key working this many seconds (at most 366 days); absent or 0 =
    /// revoke it now.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 31_622_400)]
    pub overlap_seconds: Option<Count>,
}

/// `GET /v1/keys` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1-based page (default 1).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_u64)]
    pub page: Option<u32>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Substring of name or prefix.
    #[param(pattern = r"^[^\u0000]*$")]
    pub search: Option<String>,
    /// Only keys of this org (an org admin sees only its own org anyway).
    #[param(pattern = r"^[^\u0000]*$")]
    pub org: Option<String>,
    /// `active`, `paused`, `expired` or `revoked`; empty = any.
    #[param(schema_with = status_filter_schema, required = false)]
    pub status: Option<String>,
    /// Only keys unused for this long (by last use, or creation when never used),
    /// e.g. `30d` (1-6 digits and a unit; empty = no filter): the candidates of
    /// `[hygiene] pause_after_idle`.
    #[param(pattern = r"^([0-9]{1,6}(ms|s|m|h|d))?$")]
    pub idle: Option<String>,
}

/// One page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Keys on this page, newest first.
    pub items: Vec<KeyView>,
    /// Keys matching, on all pages.
    pub total: u64,
    /// This page.
    #[schema(value_type = i64, minimum = 1, maximum = 4_294_967_295_u64)]
    pub page: u32,
    /// Page size.
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: u32,
}

/// `GET /v1/audit` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// 1-based page (default 1).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_u64)]
    pub page: Option<u32>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One audit log entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// Position in the log.
    pub seq: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: a CLI user, an admin key's name, or `system`.
    pub actor: String,
    /// The admin key that acted, for changes over this API.
    pub actor_key_id: Option<Uuid>,
    /// `create`, `update`, `pause`, `resume`, `revoke` or `rotate`.
    pub action: String,
    /// The key acted on.
    pub target: Option<Uuid>,
    /// That key's org.
    pub org_id: Option<String>,
    /// The client address, for changes over this API.
    pub client_ip: Option<String>,
    /// `admin_key`, `cli` or `system`.
    pub auth_method: String,
    /// Details.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// One page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Entries, newest first.
    pub items: Vec<AuditView>,
    /// Entries matching, on all pages.
    pub total: u64,
    /// This page.
    #[schema(value_type = i64, minimum = 1, maximum = 4_294_967_295_u64)]
    pub page: u32,
    /// Page size.
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: u32,
}

/// A key's quota standing.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// The key.
    pub key_id: Uuid,
    /// Start of the current period.
    pub period_start: DateTime<Utc>,
    /// When the current period ends and the budget renews.
    pub reset_at: DateTime<Utc>,
    /// Units used in the current period.
    pub used: u64,
    /// The period's limit.
    pub limit: u64,
    /// Units left.
    pub remaining: u64,
    /// Stored usage of recent periods, newest first.
    pub history: Vec<PeriodUsage>,
}

/// Usage of one past or current period.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodUsage {
    /// Start of the period.
    pub period_start: DateTime<Utc>,
    /// Units used.
    pub used: u64,
}

/// The error body of every refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
    /// The request's id.
    pub request_id: String,
}

async fn load(state: &State, admin: &Admin, id: Uuid) -> Result<KeyRecord, ApiError> {
    let record = state.keys.get(id).await?;
    if admin.may_manage(&record) {
        Ok(record)
    } else {
        Err(ApiError::not_found())
    }
}

/// Create a key; the response holds the plaintext key, shown only this once.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    responses(
        (status = 201, description = "Created", body = KeyCreated),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn create(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let org = match (admin.org(), body.org) {
        (Some(mine), Some(asked)) if asked != mine => {
            return Err(ApiError::rejected(&crate::auth::Rejection::OrgMismatch));
        }
        (Some(mine), _) => Some(mine.to_owned()),
        (None, asked) => asked,
    };
    let owner = match body.owner {
        Some(tag) => {
            Some(Owner::parse(&tag).ok_or_else(|| ApiError::invalid("owner must be user:<id> or org:<id>"))?)
        }
        None => None,
    };
    if body.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::invalid("metadata must be a JSON object"));
    }
    let new = NewKey {
        name: body.name,
        org_id: org,
        owner,
        scopes: body.scopes.unwrap_or_else(|| vec!["read".into()]),
        environment: body.environment,
        expires_at: body.expires_at,
        quota_limit: body.quota.map(|c| c.0),
        restrictions: Restrictions {
            allowed_ips: networks(body.allowed_ips.as_deref().unwrap_or_default())?,
            rate_limit: body.rate_limit.as_deref().map(rate).transpose()?,
            mcp: body.mcp.map(Into::into).unwrap_or_default(),
            ..body.restrictions.unwrap_or_default().into()
        },
        metadata: body.metadata,
    };
    let (key, record) = state.keys.create(new, &admin.actor).await?;
    let view = KeyView::of(&record, state.clock.now());
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            key: key.expose().to_owned(),
            view,
            replaces: None,
        }),
    ))
}

/// List keys, newest first (never the keys themselves).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(ListParams),
    responses(
        (status = 200, description = "A page of keys", body = KeyList),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn list(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<KeyList>, ApiError> {
    let org = match (admin.org(), params.org) {
        (Some(mine), Some(asked)) if asked != mine => {
            return Err(ApiError::rejected(&crate::auth::Rejection::OrgMismatch));
        }
        (Some(mine), _) => Some(mine.to_owned()),
        (None, asked) => asked,
    };
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            Status::parse(s)
                .ok_or_else(|| ApiError::invalid("status must be active, paused, expired or revoked"))?,
        ),
    };
    let idle_since = match params.idle.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            crate::config::parse_duration(s)
                .and_then(|idle| crate::manage::idle_since(state.clock.now(), idle))
                .ok_or_else(|| ApiError::invalid("idle must be a duration like 30d, 12h or 90m"))?,
        ),
    };
    let query = ListQuery {
        org,
        search: params.search.filter(|s| !s.is_empty()),
        status,
        idle_since,
        page: params.page.unwrap_or(1),
        limit: params.limit.unwrap_or(50),
    };
    if query.page == 0 || !(1..=1000).contains(&query.limit) {
        return Err(ApiError::invalid("page must be ≥ 1 and limit 1-1000"));
    }
    let page = state.keys.list(&query).await?;
    let now = state.clock.now();
    Ok(Json(KeyList {
        items: page.items.iter().map(|r| KeyView::of(r, now)).collect(),
        total: page.total,
        page: page.page,
        limit: page.limit,
    }))
}

/// Show one key.
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 400, description = "Invalid request (e.g. more than one credential)", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such key (or another org's)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn show(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<KeyView>, ApiError> {
    let record = load(&state, &admin, id).await?;
    Ok(Json(KeyView::of(&record, state.clock.now())))
}

/// Change name, scopes, quota, expiry, restrictions or metadata.
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", params(("id" = Uuid, Path, description = "Key id")), request_body = UpdateKey,
    responses(
        (status = 200, description = "The updated key", body = KeyView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such key (or another org's)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn update(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateKey>,
) -> Result<Json<KeyView>, ApiError> {
    load(&state, &admin, id).await?;
    if body.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::invalid("metadata must be a JSON object"));
    }
    if body
        .name
        .as_ref()
        .is_some_and(|n| n.trim().is_empty() || n.chars().count() > 200)
    {
        return Err(ApiError::invalid("name must be 1-200 characters"));
    }
    let patch = Patch {
        name: body.name,
        scopes: body.scopes,
        restrictions: body.restrictions.map(Into::into),
        allowed_ips: body.allowed_ips.as_deref().map(networks).transpose()?,
        rate_limit: match body.rate_limit {
            Some(r) => Some(r.as_deref().map(rate).transpose()?),
            None => None,
        },
        mcp: body.mcp.map(Into::into),
        quota_limit: body.quota.map(|q| q.map(|c| c.0)),
        expires_at: body.expires_at,
        metadata: body.metadata,
    };
    let record = state.keys.update(id, &patch, &admin.actor).await?;
    Ok(Json(KeyView::of(&record, state.clock.now())))
}

/// Pause a key (reversible).
#[utoipa::path(post, path = "/v1/keys/{id}/pause", tag = "keys", params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The paused key", body = KeyView),
        (status = 400, description = "Invalid request (e.g. more than one credential)", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such key (or another org's)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn pause(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<KeyView>, ApiError> {
    load(&state, &admin, id).await?;
    let record = state.keys.pause(id, &admin.actor).await?;
    Ok(Json(KeyView::of(&record, state.clock.now())))
}

/// Resume a paused key.
#[utoipa::path(post, path = "/v1/keys/{id}/resume", tag = "keys", params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The resumed key", body = KeyView),
        (status = 400, description = "Invalid request (e.g. more than one credential)", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such key (or another org's)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn resume(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<KeyView>, ApiError> {
    load(&state, &admin, id).await?;
    let record = state.keys.resume(id, &admin.actor).await?;
    Ok(Json(KeyView::of(&record, state.clock.now())))
}

/// Revoke a key at once. Irreversible; revoking a revoked key changes nothing and
/// answers 200 with the original revocation time.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The revoked key", body = KeyView),
        (status = 400, description = "Invalid request (e.g. more than one credential)", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such key (or another org's)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn revoke(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<KeyView>, ApiError> {
    load(&state, &admin, id).await?;
    let record = state.keys.revoke(id, &admin.actor).await?;
    Ok(Json(KeyView::of(&record, state.clock.now())))
}

/// Issue a successor with the same attributes; the old key is revoked now, or after
/// `overlap_seconds`. The response holds the new plaintext key, shown only this once.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", params(("id" = Uuid, Path, description = "Key id")),
    // Optional (no body = revoke the old key now); `openapi::OptionalRotateBody`
    // marks it so: `Option<RotateKey>` would also (wrongly) allow a JSON `null`.
    request_body(content = RotateKey, description = "Optional; empty body = revoke the old key now"),
    responses(
        (status = 201, description = "The successor", body = KeyCreated),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such key (or another org's)", body = ErrorBody),
        (status = 409, description = "The key is revoked (`already_revoked`)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn rotate(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    body: Bytes,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let body: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
        super::error::from_object(value)?
    };
    let overlap_secs = body.overlap_seconds.map_or(0, |c| c.0);
    if overlap_secs > MAX_OVERLAP_SECONDS {
        return Err(ApiError::invalid(
            "overlap_seconds must be at most one year (366 days, 31622400)",
        ));
    }
    let overlap_secs = i64::try_from(overlap_secs).unwrap_or_default();
    let current = load(&state, &admin, id).await?;
    if current.status(state.clock.now()) == Status::Revoked {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_revoked",
            format!("key {id} is revoked; a revoked key cannot be rotated"),
        ));
    }
    let (key, record) = state
        .keys
        .rotate(id, chrono::Duration::seconds(overlap_secs), &admin.actor)
        .await?;
    let old = state.keys.get(id).await?;
    let now = state.clock.now();
    let replaces = old.revoked_at.map(|revoked_at| Replaced { id, revoked_at });
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            key: key.expose().to_owned(),
            view: KeyView::of(&record, now),
            replaces,
        }),
    ))
}

/// A key's usage: this period's count, limit and reset time, and recent periods.
#[utoipa::path(get, path = "/v1/keys/{id}/usage", tag = "keys", params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "Usage", body = UsageView),
        (status = 400, description = "Invalid request (e.g. more than one credential)", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such key (or another org's)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn usage(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<UsageView>, ApiError> {
    let record = load(&state, &admin, id).await?;
    let standing = state.counters.standing(&record, state.clock.now()).await?;
    let history = state
        .store
        .usage_history(id, 12)
        .await?
        .into_iter()
        .filter_map(|(start, used)| {
            Some(PeriodUsage {
                period_start: DateTime::from_timestamp(start, 0)?,
                used,
            })
        })
        .collect();
    Ok(Json(UsageView {
        key_id: id,
        period_start: standing.window.start,
        reset_at: standing.window.end,
        used: standing.used,
        limit: standing.limit,
        remaining: standing.limit.saturating_sub(standing.used),
        history,
    }))
}

/// The audit log, newest first (an org admin sees its org's entries only).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditList),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry shortly", body = ErrorBody),
    ),
    security(("admin_key" = [])))]
pub async fn audit(
    AxumState(state): AxumState<State>,
    admin: Admin,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    let (page, limit) = (params.page.unwrap_or(1), params.limit.unwrap_or(50));
    if page == 0 || !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("page must be ≥ 1 and limit 1-1000"));
    }
    let found = state.store.audit(admin.org(), page, limit).await?;
    Ok(Json(AuditList {
        items: found
            .items
            .into_iter()
            .map(|e| AuditView {
                seq: e.seq,
                at: e.at,
                actor: e.actor,
                actor_key_id: e.actor_key_id,
                action: e.action,
                target: e.key_id,
                org_id: e.org_id,
                client_ip: e.client_ip,
                auth_method: e.auth_method,
                detail: e.detail,
            })
            .collect(),
        total: found.total,
        page: found.page,
        limit: found.limit,
    }))
}
