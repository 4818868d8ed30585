//! A guest's network, denied by default: the rules of the annotation
//! [`OUTBOUND_ANNOTATION`] say which outbound HTTP requests
//! (`wasi:http/outgoing-handler`) and which sockets (`wasi:sockets`: TCP,
//! UDP, name lookup, listening) a component may use. Commands and served
//! proxies get the same policy; core modules (WASI preview 1) have no
//! network to police.
//!
//! A rule is `SCHEME://HOST[:PORT]`:
//! - `SCHEME`: `http`, `https` (outbound HTTP), `tcp`, `udp` (sockets to a
//!   peer), `tcp-listen`, `udp-listen` (a local address the guest may listen
//!   on or bind), or `*` (all of them);
//! - `HOST`: a name, `*.domain`, an IP (`[::1]` for IPv6), a CIDR
//!   (`10.0.0.0/8`, `[fd00::/8]`) or `*`; sockets are checked by address, so
//!   socket rules take an IP, a CIDR or `*` (a `*://` rule with a name
//!   applies to HTTP only);
//! - `PORT`: a number or `*`; http and https default to 80 and 443, the
//!   others need one.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wasmbox_spec::{Error, Result};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::WasiCtxBuilder;

/// Spin-style allow-list of the guest's outbound HTTP and sockets.
pub use wasmbox_spec::annotations::ALLOWED_OUTBOUND_HOSTS as OUTBOUND_ANNOTATION;

const SCHEMES: [&str; 7] = ["http", "https", "tcp", "udp", "tcp-listen", "udp-listen", "*"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Name(String),
    /// `*.domain`: names under the domain (not the domain itself).
    Under(String),
    /// An address and prefix length (the full length for one address).
    Net(IpAddr, u8),
}

impl Host {
    fn parse(text: &str) -> std::result::Result<Host, &'static str> {
        if text == "*" {
            return Ok(Host::Any);
        }
        if let Some((ip, len)) = text.split_once('/') {
            let ip: IpAddr = ip.parse().map_err(|_| "a rule names a host and port, not a path")?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or("the CIDR's prefix length is out of range")?;
            return Ok(Host::Net(ip, len));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            let full = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Host::Net(ip, full));
        }
        if let Some(domain) = text.strip_prefix("*.") {
            return Ok(Host::Under(domain.to_ascii_lowercase()));
        }
        if text.contains('*') {
            return Err("* stands for a whole host or a leading label (*.example.com)");
        }
        Ok(Host::Name(text.to_ascii_lowercase()))
    }

    /// Whether the rule can match a socket address.
    fn is_address(&self) -> bool {
        matches!(self, Host::Any | Host::Net(..))
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            Host::Any => true,
            Host::Net(net, len) => in_net(ip, *net, *len),
            Host::Name(_) | Host::Under(_) => false,
        }
    }

    fn matches_host(&self, host: &str) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.matches_ip(ip),
            Err(_) => match self {
                Host::Any => true,
                Host::Name(n) => *n == host,
                Host::Under(d) => host.strip_suffix(d.as_str()).is_some_and(|rest| rest.ends_with('.')),
                Host::Net(..) => false,
            },
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    // An IPv4 peer seen through a dual-stack socket.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// One rule of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    scheme: String,
    host: Host,
    /// `None`: any port.
    port: Option<u16>,
    text: String,
}

impl Rule {
    fn covers(&self, scheme: &str) -> bool {
        self.scheme == "*" || self.scheme == scheme
    }
}

/// The rules the guest's network use is checked against: none allows
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList {
    rules: Vec<Rule>,
}

impl AllowList {
    /// The plan's list: its annotation, or none.
    pub fn of(annotations: &std::collections::BTreeMap<String, String>) -> Result<AllowList> {
        annotations.get(OUTBOUND_ANNOTATION).map_or(Ok(AllowList::default()), |v| AllowList::parse(v))
    }

    /// Rules separated by commas or whitespace.
    pub fn parse(value: &str) -> Result<AllowList> {
        let mut rules = Vec::new();
        for text in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()) {
            let invalid = |why: &str| {
                Error::InvalidArgument {
                what: format!("annotation {OUTBOUND_ANNOTATION}: rule {text:?}"),
                reason: format!(
                    "{why}; rules look like https://api.example.com:443, http://127.0.0.1:*, *://*.example.com:*, tcp://10.0.0.0/8:5432, tcp-listen://0.0.0.0:8080"
                ),
            }
            };
            let (scheme, rest) = text.split_once("://").ok_or_else(|| invalid("no scheme"))?;
            if !SCHEMES.contains(&scheme) {
                return Err(invalid("the scheme must be http, https, tcp, udp, tcp-listen, udp-listen or *"));
            }
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(|| invalid("an unclosed ["))?;
                match after {
                    "" => (host, None),
                    p => (host, Some(p.strip_prefix(':').ok_or_else(|| invalid("junk after ]"))?)),
                }
            } else {
                match rest.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (rest, None),
                }
            };
            if host.is_empty() {
                return Err(invalid("no host"));
            }
            let host = Host::parse(host).map_err(invalid)?;
            let port = match port {
                None => match scheme {
                    "http" => Some(80),
                    "https" => Some(443),
                    _ => return Err(invalid(&format!("{scheme}:// needs a port (a number or *)"))),
                },
                Some("*") => None,
                Some(p) => Some(p.parse::<u16>().map_err(|_| invalid("the port must be a number or *"))?),
            };
            if !matches!(scheme, "http" | "https" | "*") && !host.is_address() {
                return Err(invalid("sockets are checked by address: a tcp or udp rule takes an IP, a CIDR or *"));
            }
            rules.push(Rule { scheme: scheme.to_string(), host, port, text: text.to_string() });
        }
        Ok(AllowList { rules })
    }

    /// The rule allowing an HTTP request to `scheme://host:port`, if any.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> Option<&str> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.rules
            .iter()
            .find(|r| r.covers(scheme) && r.port.is_none_or(|p| p == port) && r.host.matches_host(&host))
            .map(|r| r.text.as_str())
    }

    /// The rule allowing a socket of `kind` (`tcp`, `udp`, `tcp-listen`,
    /// `udp-listen`) to use `addr`, if any.
    fn allows_socket(&self, kind: &str, addr: SocketAddr) -> bool {
        self.rules
            .iter()
            .any(|r| r.covers(kind) && r.port.is_none_or(|p| p == addr.port()) && r.host.matches_ip(addr.ip()))
    }

    /// Whether any rule lets sockets of `kind` be used at all.
    fn has(&self, kind: &str) -> bool {
        self.rules.iter().any(|r| r.covers(kind) && r.host.is_address())
    }

    /// Whether `use` of `addr` is allowed; what was refused, for the log.
    fn check_socket(&self, addr: SocketAddr, use_: SocketAddrUse) -> std::result::Result<(), String> {
        // The OS's own choice of local address (before a connect or a
        // send): harmless, and the use that follows is checked.
        let implicit = addr.port() == 0 && addr.ip().is_unspecified();
        let (ok, what) = match use_ {
            SocketAddrUse::TcpConnect => (self.allows_socket("tcp", addr), "tcp connect to"),
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind if implicit => (true, "bind to"),
            SocketAddrUse::TcpBind => (self.allows_socket("tcp-listen", addr), "tcp bind to"),
            SocketAddrUse::TcpListen => (self.allows_socket("tcp-listen", addr), "tcp listen on"),
            // Accepting on a socket that was allowed to listen.
            SocketAddrUse::TcpAccept => (self.has("tcp-listen"), "tcp accept from"),
            SocketAddrUse::UdpBind => (self.allows_socket("udp-listen", addr), "udp bind to"),
            SocketAddrUse::UdpSend => (self.allows_socket("udp", addr), "udp send to"),
            SocketAddrUse::UdpReceive => {
                (self.allows_socket("udp", addr) || self.has("udp-listen"), "udp receive from")
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{what} {addr}"))
        }
    }

    fn rules_text(&self) -> String {
        if self.rules.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", self.rules.iter().map(|r| &r.text).collect::<Vec<_>>())
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn denied_line(what: &str, allow: &AllowList) {
    let _ = writeln!(
        std::io::stderr(),
        "wasmbox: {what} denied: no rule of annotation {OUTBOUND_ANNOTATION} allows it (rules: {})",
        allow.rules_text()
    );
}

/// A guest's network policy: its allow-list, and a count of what it
/// refused.
#[derive(Clone, Default)]
pub struct Policy {
    pub allow: Arc<AllowList>,
    pub denied: Arc<AtomicU64>,
}

impl Policy {
    /// The policy of a plan's annotations (an unparsable rule is an error
    /// naming it).
    pub fn of(annotations: &std::collections::BTreeMap<String, String>) -> Result<Policy> {
        Ok(Policy { allow: Arc::new(AllowList::of(annotations)?), denied: Arc::default() })
    }

    /// Puts the socket policy on a guest's WASI context: every address a
    /// socket connects to, sends to, binds or listens on is checked, and a
    /// refusal is `access-denied` in the guest and a line on stderr (so
    /// TCP and UDP sockets can be made, and are refused at their first
    /// use); name lookup only where a tcp or udp rule is.
    pub fn police_sockets(&self, b: &mut WasiCtxBuilder) {
        b.allow_tcp(true);
        b.allow_udp(true);
        b.allow_ip_name_lookup(self.allow.has("tcp") || self.allow.has("udp"));
        let (allow, denied) = (Arc::clone(&self.allow), Arc::clone(&self.denied));
        b.socket_addr_check(move |addr, use_| {
            let ok = match allow.check_socket(addr, use_) {
                Ok(()) => true,
                Err(what) => {
                    denied.fetch_add(1, Ordering::Relaxed);
                    denied_line(&what, &allow);
                    false
                }
            };
            Box::pin(async move { ok })
        });
    }

    /// The hook that polices outbound HTTP.
    pub fn outbound(&self) -> Outbound {
        Outbound { allow: Arc::clone(&self.allow), denied: Arc::clone(&self.denied) }
    }
}

/// The outbound HTTP hook: requests the allow-list does not name fail in
/// the guest with `HttpRequestDenied`, and a line names the URL.
pub struct Outbound {
    pub allow: Arc<AllowList>,
    /// Counts refusals (sockets' and requests').
    pub denied: Arc<AtomicU64>,
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        match self.allow.allows(&scheme, &host, port) {
            Some(_) => wasmtime_wasi_http::default_hooks().send_request(request, options, fut),
            None => {
                self.denied.fetch_add(1, Ordering::Relaxed);
                denied_line(&format!("outbound request to {scheme}://{host}:{port}"), &self.allow);
                Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn http_rules() {
        let a =
            AllowList::parse("https://api.example.com, http://127.0.0.1:*  *://*.svc.local:8080 http://10.0.0.0/8:*")
                .unwrap();
        assert!(a.allows("https", "api.example.com", 443).is_some());
        assert!(a.allows("http", "api.example.com", 443).is_none());
        assert!(a.allows("https", "api.example.com", 8443).is_none());
        assert!(a.allows("http", "127.0.0.1", 9999).is_some());
        assert!(a.allows("http", "127.0.0.2", 80).is_none());
        assert!(a.allows("http", "db.svc.local", 8080).is_some());
        assert!(a.allows("https", "svc.local", 8080).is_none());
        assert!(a.allows("https", "evilsvc.local", 8080).is_none());
        assert!(a.allows("http", "10.1.2.3", 81).is_some());
        assert!(a.allows("http", "11.1.2.3", 81).is_none());
        assert!(AllowList::default().allows("http", "127.0.0.1", 80).is_none());
        for bad in [
            "api.example.com",
            "ftp://x",
            "http://x:port",
            "*://x",
            "http://x/path",
            "tcp://db.local:5432",
            "udp://*.x:53",
            "tcp://1.2.3.4",
            "http://10.0.0.0/33",
            "http://a*b",
        ] {
            let e = AllowList::parse(bad).unwrap_err().to_string();
            assert!(e.contains(OUTBOUND_ANNOTATION) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn socket_rules() {
        let a = AllowList::parse("tcp://10.0.0.0/8:5432 tcp-listen://0.0.0.0:8080 udp://[fd00::/8]:53").unwrap();
        assert!(a.check_socket(sa("10.9.8.7:5432"), SocketAddrUse::TcpConnect).is_ok());
        assert!(a.check_socket(sa("10.9.8.7:5433"), SocketAddrUse::TcpConnect).is_err());
        assert!(a.check_socket(sa("11.0.0.1:5432"), SocketAddrUse::TcpConnect).is_err());
        assert!(a.check_socket(sa("[::ffff:10.0.0.1]:5432"), SocketAddrUse::TcpConnect).is_ok());
        assert!(a.check_socket(sa("0.0.0.0:0"), SocketAddrUse::TcpBind).is_ok());
        assert!(a.check_socket(sa("0.0.0.0:8080"), SocketAddrUse::TcpBind).is_ok());
        assert!(a.check_socket(sa("0.0.0.0:8080"), SocketAddrUse::TcpListen).is_ok());
        assert!(a.check_socket(sa("0.0.0.0:8081"), SocketAddrUse::TcpListen).is_err());
        assert!(a.check_socket(sa("1.2.3.4:999"), SocketAddrUse::TcpAccept).is_ok());
        assert!(a.check_socket(sa("[fd12::1]:53"), SocketAddrUse::UdpSend).is_ok());
        assert!(a.check_socket(sa("[fe80::1]:53"), SocketAddrUse::UdpSend).is_err());
        assert!(a.check_socket(sa("0.0.0.0:53"), SocketAddrUse::UdpBind).is_err());
        let none = AllowList::default();
        assert!(none.check_socket(sa("0.0.0.0:0"), SocketAddrUse::TcpBind).is_ok());
        for (addr, u) in [
            ("0.0.0.0:8080", SocketAddrUse::TcpBind),
            ("127.0.0.1:80", SocketAddrUse::TcpConnect),
            ("0.0.0.0:8080", SocketAddrUse::TcpListen),
            ("1.2.3.4:9", SocketAddrUse::TcpAccept),
            ("0.0.0.0:53", SocketAddrUse::UdpBind),
            ("1.1.1.1:53", SocketAddrUse::UdpSend),
            ("1.1.1.1:53", SocketAddrUse::UdpReceive),
        ] {
            assert!(none.check_socket(sa(addr), u).is_err(), "{addr} {u:?}");
        }
        // A name rule under * covers HTTP only.
        let http_only = AllowList::parse("*://*.example.com:*").unwrap();
        assert!(!http_only.has("tcp"));
        assert!(AllowList::parse("*://*:*").unwrap().check_socket(sa("8.8.8.8:53"), SocketAddrUse::UdpSend).is_ok());
    }
}
