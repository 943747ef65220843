//! What the app server is told about a client, once, with OpenConnection: its claims, its
//! request headers and its query string, each cleaned of what is the relay's business, and
//! its address (`X-Forwarded-For`), believed from a proxy only when the proxy is trusted.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::config::RelayConfig;
use super::http::{pair_named, HttpRequest};
use crate::aspnetcore::negotiate::TransportKind;
use crate::auth::Claims;

/// What the app server is told about a client, once.
#[derive(Debug, Default)]
pub(crate) struct Intro {
    pub(crate) claims: Vec<(String, String)>,
    pub(crate) headers: Vec<(String, Vec<String>)>,
    pub(crate) query: String,
}

impl Intro {
    /// From the client's token and its first request (the headers come with its transport).
    pub(crate) fn new(claims: &Claims, req: &HttpRequest) -> Self {
        Self {
            claims: self::claims(claims),
            headers: Vec::new(),
            query: query(&req.query),
        }
    }
}

/// Claims as the app server's SDK expects them: in the token's order (the name identifier
/// first), the short JWT claim types mapped back to their long .NET names as the JWT handler
/// the SDK signs with maps them (its inbound claim-type map), token bookkeeping claims
/// dropped.
fn claims(claims: &Claims) -> Vec<(String, String)> {
    let long_name = |name: &str| -> String {
        LONG_CLAIM_TYPES
            .iter()
            .find(|(short, _)| *short == name)
            .map_or_else(|| name.to_owned(), |(_, long)| (*long).to_owned())
    };
    let mut out = Vec::new();
    if let Some(nameid) = &claims.nameid {
        out.push((long_name("nameid"), nameid.clone()));
    }
    for (name, value) in &claims.extra {
        if matches!(name.as_str(), "aud" | "exp" | "nbf" | "iat" | "iss") {
            continue;
        }
        let values: Vec<&serde_json::Value> = match value {
            serde_json::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for v in values {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((long_name(name), text));
        }
    }
    out
}

/// The JWT handler's short claim types and their long .NET names (System.IdentityModel's
/// `ClaimTypeMapping`, which the Azure SDK's token writer uses in reverse).
const LONG_CLAIM_TYPES: &[(&str, &str)] = &[
    ("actort", "http://schemas.xmlsoap.org/ws/2009/09/identity/claims/actor"),
    ("birthdate", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/dateofbirth"),
    ("email", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"),
    ("family_name", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname"),
    ("gender", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/gender"),
    ("given_name", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname"),
    ("nameid", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier"),
    ("sub", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier"),
    ("website", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/webpage"),
    ("unique_name", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"),
    ("oid", "http://schemas.microsoft.com/identity/claims/objectidentifier"),
    ("scp", "http://schemas.microsoft.com/identity/claims/scope"),
    ("tid", "http://schemas.microsoft.com/identity/claims/tenantid"),
    ("acr", "http://schemas.microsoft.com/claims/authnclassreference"),
    ("adfs1email", "http://schemas.xmlsoap.org/claims/EmailAddress"),
    ("adfs1upn", "http://schemas.xmlsoap.org/claims/UPN"),
    ("amr", "http://schemas.microsoft.com/claims/authnmethodsreferences"),
    ("authmethod", "http://schemas.microsoft.com/ws/2008/06/identity/claims/authenticationmethod"),
    ("certapppolicy", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/applicationpolicy"),
    ("certauthoritykeyidentifier", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/authoritykeyidentifier"),
    ("certbasicconstraints", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/basicconstraints"),
    ("certeku", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/eku"),
    ("certissuer", "http://schemas.microsoft.com/2012/12/certificatecontext/field/issuer"),
    ("certissuername", "http://schemas.microsoft.com/2012/12/certificatecontext/field/issuername"),
    ("certkeyusage", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/keyusage"),
    ("certnotafter", "http://schemas.microsoft.com/2012/12/certificatecontext/field/notafter"),
    ("certnotbefore", "http://schemas.microsoft.com/2012/12/certificatecontext/field/notbefore"),
    ("certpolicy", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/certificatepolicy"),
    ("certpublickey", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/rsa"),
    ("certrawdata", "http://schemas.microsoft.com/2012/12/certificatecontext/field/rawdata"),
    ("certserialnumber", "http://schemas.microsoft.com/ws/2008/06/identity/claims/serialnumber"),
    ("certsignaturealgorithm", "http://schemas.microsoft.com/2012/12/certificatecontext/field/signaturealgorithm"),
    ("certsubject", "http://schemas.microsoft.com/2012/12/certificatecontext/field/subject"),
    ("certsubjectaltname", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/san"),
    ("certsubjectkeyidentifier", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/subjectkeyidentifier"),
    ("certsubjectname", "http://schemas.microsoft.com/2012/12/certificatecontext/field/subjectname"),
    ("certtemplateinformation", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/certificatetemplateinformation"),
    ("certtemplatename", "http://schemas.microsoft.com/2012/12/certificatecontext/extension/certificatetemplatename"),
    ("certthumbprint", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/thumbprint"),
    ("certx509version", "http://schemas.microsoft.com/2012/12/certificatecontext/field/x509version"),
    ("clientapplication", "http://schemas.microsoft.com/2012/01/requestcontext/claims/x-ms-client-application"),
    ("clientip", "http://schemas.microsoft.com/2012/01/requestcontext/claims/x-ms-client-ip"),
    ("clientuseragent", "http://schemas.microsoft.com/2012/01/requestcontext/claims/x-ms-client-user-agent"),
    ("commonname", "http://schemas.xmlsoap.org/claims/CommonName"),
    ("denyonlyprimarygroupsid", "http://schemas.microsoft.com/ws/2008/06/identity/claims/denyonlyprimarygroupsid"),
    ("denyonlyprimarysid", "http://schemas.microsoft.com/ws/2008/06/identity/claims/denyonlyprimarysid"),
    ("denyonlysid", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/denyonlysid"),
    ("devicedispname", "http://schemas.microsoft.com/2012/01/devicecontext/claims/displayname"),
    ("deviceid", "http://schemas.microsoft.com/2012/01/devicecontext/claims/identifier"),
    ("deviceismanaged", "http://schemas.microsoft.com/2012/01/devicecontext/claims/ismanaged"),
    ("deviceostype", "http://schemas.microsoft.com/2012/01/devicecontext/claims/ostype"),
    ("deviceosver", "http://schemas.microsoft.com/2012/01/devicecontext/claims/osversion"),
    ("deviceowner", "http://schemas.microsoft.com/2012/01/devicecontext/claims/userowner"),
    ("deviceregid", "http://schemas.microsoft.com/2012/01/devicecontext/claims/registrationid"),
    ("endpointpath", "http://schemas.microsoft.com/2012/01/requestcontext/claims/x-ms-endpoint-absolute-path"),
    ("forwardedclientip", "http://schemas.microsoft.com/2012/01/requestcontext/claims/x-ms-forwarded-client-ip"),
    ("fwt", "http://schemas.microsoft.com/2012/01/requestcontext/claims/x-ms-forwarded-client-ip"),
    ("group", "http://schemas.xmlsoap.org/claims/Group"),
    ("groupsid", "http://schemas.microsoft.com/ws/2008/06/identity/claims/groupsid"),
    ("idp", "http://schemas.microsoft.com/identity/claims/identityprovider"),
    ("insidecorporatenetwork", "http://schemas.microsoft.com/ws/2012/01/insidecorporatenetwork"),
    ("isregistereduser", "http://schemas.microsoft.com/2012/01/devicecontext/claims/isregistereduser"),
    ("ppid", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/privatepersonalidentifier"),
    ("primarygroupsid", "http://schemas.microsoft.com/ws/2008/06/identity/claims/primarygroupsid"),
    ("primarysid", "http://schemas.microsoft.com/ws/2008/06/identity/claims/primarysid"),
    ("proxy", "http://schemas.microsoft.com/2012/01/requestcontext/claims/x-ms-proxy"),
    ("pwdchgurl", "http://schemas.microsoft.com/ws/2012/01/passwordchangeurl"),
    ("pwdexpdays", "http://schemas.microsoft.com/ws/2012/01/passwordexpirationdays"),
    ("pwdexptime", "http://schemas.microsoft.com/ws/2012/01/passwordexpirationtime"),
    ("relyingpartytrustid", "http://schemas.microsoft.com/2012/01/requestcontext/claims/relyingpartytrustid"),
    ("role", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"),
    ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"),
    ("upn", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"),
    ("winaccountname", "http://schemas.microsoft.com/ws/2008/06/identity/claims/windowsaccountname"),
];

/// The client's query as the app server sees it: as the client sent it, with its leading `?`
/// (as Azure sends it, and as ASP.NET Core's `QueryString` requires), without the bearer
/// token. Every other parameter keeps its own encoding.
pub(crate) fn query(query: &str) -> String {
    let kept = strip_query_params(query, &["access_token"]);
    if kept.is_empty() {
        kept
    } else {
        format!("?{kept}")
    }
}

/// `query` (without `?`) without the parameters named in `names` (compared decoded and in
/// any case); every other parameter keeps its own encoding and order.
pub fn strip_query_params(query: &str, names: &[&str]) -> String {
    let mut kept = String::with_capacity(query.len());
    let pairs = query.trim_start_matches('?').split('&');
    for pair in pairs.filter(|pair| !pair.is_empty()) {
        if !names.iter().any(|name| pair_named(pair, name)) {
            if !kept.is_empty() {
                kept.push('&');
            }
            kept.push_str(pair);
        }
    }
    kept
}

/// The client's request headers as the app server sees them: without credentials and
/// WebSocket plumbing, bounded, plus the relay's instance id.
pub(crate) fn headers(
    req: &HttpRequest,
    config: &RelayConfig,
    transport: Option<TransportKind>,
) -> Vec<(String, Vec<String>)> {
    let (max, instance_id) = (config.max_forwarded_headers, config.instance_id.as_str());
    const DROPPED: &[&str] = &[
        "authorization",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        // The client's address is the relay's to say (X-Forwarded-For, below).
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
    ];
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut total = 0;
    let starts_with = |name: &str, prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    for (name, value) in req.headers.iter() {
        if DROPPED
            .iter()
            .any(|dropped| name.eq_ignore_ascii_case(dropped))
            || starts_with(name, "asrs-")
            || starts_with(name, "x-asrs-")
        {
            continue;
        }
        total += name.len() + value.len();
        if out.len() >= max || total > 16 * 1024 {
            break;
        }
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, values)) => values.push(value.to_owned()),
            None => out.push((name.to_owned(), vec![value.to_owned()])),
        }
    }
    if let Some(address) = client_address(req, &config.trusted_proxies) {
        out.push(("X-Forwarded-For".to_owned(), vec![address.to_string()]));
    }
    out.push(("Asrs-Instance-Id".to_owned(), vec![instance_id.to_owned()]));
    if let Some(kind) = transport {
        // The transport's name, for the app server's hub context.
        out.push(("Asrs-Transport".to_owned(), vec![kind.as_str().to_owned()]));
    }
    out
}

/// The client's address: the peer's, unless the peer is a trusted proxy. Then
/// `X-Forwarded-For` is walked from the right (each proxy appends the address it was reached
/// from), past every trusted proxy, and the first address that is not one is the client. An
/// entry that is not an address ends the walk at the last one believed.
pub(crate) fn client_address(req: &HttpRequest, trusted: &[IpRange]) -> Option<IpAddr> {
    let mut address = req.peer?.to_canonical();
    let trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !trusted(address) {
        return Some(address);
    }
    let hops = req
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|(_, value)| value.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        address = ip.to_canonical();
        if !trusted(address) {
            break;
        }
    }
    Some(address)
}

/// An address or a CIDR range of them (`10.0.0.0/8`, `::1`), as `--trusted-proxy` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a `--trusted-proxy` value is not an address or a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidIpRange(String);

impl fmt::Display for InvalidIpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an IP address or a CIDR range (10.0.0.0/8, fd00::/8)",
            self.0
        )
    }
}

impl std::error::Error for InvalidIpRange {}

impl FromStr for IpRange {
    type Err = InvalidIpRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidIpRange(s.to_owned());
        let (address, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| invalid())?
            .to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(invalid)?,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, forwarded: &[&str]) -> HttpRequest {
        HttpRequest {
            peer: Some(peer.parse().expect("an address")),
            headers: forwarded
                .iter()
                .map(|v| ("X-Forwarded-For".to_owned(), (*v).to_owned()))
                .collect(),
            ..HttpRequest::default()
        }
    }

    fn ranges(list: &[&str]) -> Vec<IpRange> {
        list.iter().map(|r| r.parse().expect("a range")).collect()
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: IpRange = "10.1.0.0/16".parse().expect("a range");
        assert!(r.contains("10.1.200.3".parse().expect("ip")));
        assert!(!r.contains("10.2.0.1".parse().expect("ip")));
        assert!(r.contains("::ffff:10.1.0.9".parse().expect("ip")), "mapped");
        let one: IpRange = "127.0.0.1".parse().expect("an address");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let all: IpRange = "0.0.0.0/0".parse().expect("everything");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        assert!(!all.contains("::2".parse().expect("ip")), "families differ");
        let v6: IpRange = "fd00::/8".parse().expect("a range");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("fe80::1".parse().expect("ip")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad:?}");
        }
        assert_eq!(r.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn the_client_address_is_the_peer_unless_a_trusted_proxy_names_another() {
        let none = ranges(&[]);
        let local = ranges(&["127.0.0.0/8", "10.0.0.0/8"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        // Nothing trusted: the peer, whatever the header says.
        assert_eq!(
            client_address(&req("9.9.9.9", &["6.6.6.6"]), &none),
            ip("9.9.9.9")
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(&req("9.9.9.9", &["6.6.6.6"]), &local),
            ip("9.9.9.9")
        );
        // nginx in front: the client spoofed 6.6.6.6; nginx appended the real address.
        assert_eq!(
            client_address(&req("127.0.0.1", &["6.6.6.6, 5.5.5.5"]), &local),
            ip("5.5.5.5")
        );
        // Two trusted hops, in two header lines.
        assert_eq!(
            client_address(&req("127.0.0.1", &["6.6.6.6, 5.5.5.5", "10.0.0.7"]), &local),
            ip("5.5.5.5")
        );
        // A trusted proxy with no header, or only trusted hops: the last one believed.
        assert_eq!(
            client_address(&req("127.0.0.1", &[]), &local),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(&req("127.0.0.1", &["10.0.0.7"]), &local),
            ip("10.0.0.7")
        );
        // Garbage ends the walk.
        assert_eq!(
            client_address(&req("127.0.0.1", &["5.5.5.5, junk, 10.0.0.8"]), &local),
            ip("10.0.0.8")
        );
        assert_eq!(client_address(&HttpRequest::default(), &local), None);
    }

    #[test]
    fn the_query_keeps_its_encoding_and_loses_the_token() {
        assert_eq!(query(""), "");
        assert_eq!(query("access_token=x"), "");
        assert_eq!(
            query("hub=chat&a=b%20c&access_token=secret&id=1&x=%2B"),
            "?hub=chat&a=b%20c&id=1&x=%2B"
        );
        assert_eq!(query("Access_Token=x&&a"), "?a");
        // Names are compared decoded.
        assert_eq!(query("access%5Ftoken=x&access+token=y"), "?access+token=y");
    }

    #[test]
    fn short_claim_types_get_their_long_names() {
        let mut c = Claims::issued_at(1, 2);
        c.aud.push("x".into());
        c.nameid = Some("alice".into());
        c.insert("given_name", "Alice");
        c.insert("upn", "alice@example.org");
        c.insert("role", serde_json::json!(["admin", "user"]));
        c.insert("asrs.s.uid", "alice");
        c.insert("iss", "me");
        let got = claims(&c);
        let long = |s: &str| format!("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/{s}");
        let role = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role";
        assert_eq!(
            got,
            // In the token's order (the name identifier first).
            [
                (long("nameidentifier"), "alice".to_owned()),
                (long("givenname"), "Alice".to_owned()),
                (long("upn"), "alice@example.org".to_owned()),
                (role.to_owned(), "admin".to_owned()),
                (role.to_owned(), "user".to_owned()),
                ("asrs.s.uid".to_owned(), "alice".to_owned()),
            ]
        );
    }
}
