//! The HTTP trigger's routes: exact (`/cart`), with single-segment
//! wildcards (`/users/:id/edit`) and trailing wildcards (`/users/...`).
//! Where several match, the most specific wins: more segments before any
//! trailing wildcard, then an exact route over a trailing wildcard, then
//! more literal segments over `:name` ones. Two routes that are the same
//! pattern are refused when the table is made. `/.well-known/spin/...` is
//! the runtime's own and never reaches a component.

/// The prefix every app reserves for the runtime (health and info).
pub const WELL_KNOWN: &str = "/.well-known/spin/";

/// What a route answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The component with this id.
    Component(String),
    /// A fixed response (`static_response`).
    Static { status: u16, headers: Vec<(String, String)>, body: String },
}

/// One `[[trigger.http]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrigger {
    /// `None`: a private endpoint (`route = { private = true }`), reachable
    /// only from inside the app.
    pub route: Option<Pattern>,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A route as written in the manifest, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    raw: String,
    segments: Vec<Segment>,
    /// Ends in `/...`.
    trailing: bool,
}

impl Pattern {
    pub fn parse(raw: &str) -> Result<Pattern, String> {
        if !raw.starts_with('/') {
            return Err(format!("{raw:?}: a route starts with '/'"));
        }
        let (body, trailing) = match raw.strip_suffix("/...") {
            Some(b) => (b, true),
            None if raw == "/..." => ("", true),
            None => (raw, false),
        };
        let mut segments = Vec::new();
        for s in body.split('/').filter(|s| !s.is_empty()) {
            if s == "..." {
                return Err(format!("{raw:?}: '...' may only end a route (/path/...)"));
            }
            if s == "." || s == ".." {
                return Err(format!("{raw:?}: '.' and '..' are not route segments"));
            }
            segments.push(match s.strip_prefix(':') {
                Some("") => return Err(format!("{raw:?}: a ':' wildcard needs a name (/users/:id)")),
                Some(name) => Segment::Param(name.to_string()),
                None => Segment::Literal(s.to_string()),
            });
        }
        Ok(Pattern { raw: raw.to_string(), segments, trailing })
    }

    /// The route as the manifest wrote it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The route without its trailing wildcard (`/users/...` is `/users`).
    fn without_wildcard(&self) -> &str {
        if self.trailing {
            self.raw.strip_suffix("/...").unwrap_or("")
        } else {
            &self.raw
        }
    }

    /// How specific it is: longer first, exact before trailing, literal
    /// segments before wildcards.
    fn rank(&self) -> (usize, bool, usize) {
        let literals = self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
        (self.segments.len(), !self.trailing, literals)
    }

    /// The same shape: two routes that would match the same paths.
    fn same_shape(&self, other: &Pattern) -> bool {
        self.trailing == other.trailing
            && self.segments.len() == other.segments.len()
            && self.segments.iter().zip(&other.segments).all(|(a, b)| match (a, b) {
                (Segment::Literal(x), Segment::Literal(y)) => x == y,
                (Segment::Param(_), Segment::Param(_)) => true,
                _ => false,
            })
    }

    /// The wildcard values and the rest of the path (`spin-path-info`), if
    /// `path` matches.
    fn matches(&self, path: &str) -> Option<(Vec<(String, String)>, String)> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() < self.segments.len() || (!self.trailing && parts.len() != self.segments.len()) {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in self.segments.iter().zip(&parts) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_string())),
            }
        }
        let rest = &parts[self.segments.len()..];
        let mut info = String::new();
        for p in rest {
            info.push('/');
            info.push_str(p);
        }
        if !rest.is_empty() && path.ends_with('/') {
            info.push('/');
        }
        Some((params, info))
    }
}

/// A request's route: which trigger, and what the component is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'a> {
    /// Index into the app's `http` triggers.
    pub trigger: usize,
    pub target: &'a Target,
    pub route: &'a Pattern,
    /// `:name` wildcards and their values.
    pub params: Vec<(String, String)>,
    /// The path below the route (`spin-path-info`).
    pub path_info: String,
}

impl Match<'_> {
    /// The headers Spin adds to the request a component gets. `full_url`
    /// is the request's URL with scheme and host; `client` the peer's
    /// address.
    pub fn headers(&self, full_url: &str, client: Option<std::net::SocketAddr>) -> Vec<(String, String)> {
        let mut h = vec![
            ("spin-full-url".to_string(), full_url.to_string()),
            ("spin-path-info".to_string(), self.path_info.clone()),
            ("spin-matched-route".to_string(), self.route.raw().to_string()),
            ("spin-raw-component-route".to_string(), self.route.raw().to_string()),
            ("spin-component-route".to_string(), self.route.without_wildcard().to_string()),
            ("spin-base-path".to_string(), "/".to_string()),
        ];
        if let Some(c) = client {
            h.push(("spin-client-addr".to_string(), c.to_string()));
        }
        for (name, value) in &self.params {
            h.push((format!("spin-path-match-{name}"), value.clone()));
        }
        h
    }
}

/// An app's public routes.
#[derive(Debug, Clone)]
pub struct Router {
    /// (pattern, trigger index, target), most specific first.
    routes: Vec<(Pattern, usize, Target)>,
}

impl Router {
    /// The table of `triggers`' public routes; refuses two triggers with
    /// the same route (which one would answer is not obvious).
    pub fn new(triggers: &[HttpTrigger]) -> Result<Router, String> {
        let mut routes: Vec<(Pattern, usize, Target)> = Vec::new();
        for (i, t) in triggers.iter().enumerate() {
            let Some(p) = &t.route else { continue };
            if p.raw.starts_with(WELL_KNOWN.trim_end_matches('/')) {
                return Err(format!(
                    "trigger.http[{i}]: route {:?} is under {WELL_KNOWN}, which the runtime reserves",
                    p.raw
                ));
            }
            if let Some((other, j, _)) = routes.iter().find(|(o, _, _)| o.same_shape(p)) {
                return Err(format!(
                    "trigger.http[{i}] and trigger.http[{j}] have the same route ({:?} and {:?})",
                    p.raw, other.raw
                ));
            }
            routes.push((p.clone(), i, t.target.clone()));
        }
        routes.sort_by(|a, b| b.0.rank().cmp(&a.0.rank()).then(a.1.cmp(&b.1)));
        Ok(Router { routes })
    }

    /// The route `path` (no query) takes, if any.
    pub fn route(&self, path: &str) -> Option<Match<'_>> {
        self.routes.iter().find_map(|(p, i, target)| {
            p.matches(path).map(|(params, path_info)| Match { trigger: *i, target, route: p, params, path_info })
        })
    }

    /// Whether any route leads to the component `id`.
    pub fn serves(&self, id: &str) -> bool {
        self.routes.iter().any(|(_, _, t)| matches!(t, Target::Component(c) if c == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[&str]) -> Router {
        let triggers: Vec<HttpTrigger> = routes
            .iter()
            .map(|r| HttpTrigger { route: Some(Pattern::parse(r).unwrap()), target: Target::Component(r.to_string()) })
            .collect();
        Router::new(&triggers).unwrap()
    }

    fn which(r: &Router, path: &str) -> Option<String> {
        r.route(path).map(|m| m.route.raw().to_string())
    }

    #[test]
    fn the_most_specific_route_wins() {
        let r = router(&["/...", "/users/...", "/users/admin", "/users/:id", "/users/:id/edit", "/"]);
        assert_eq!(which(&r, "/").as_deref(), Some("/"));
        assert_eq!(which(&r, "/shop").as_deref(), Some("/..."));
        assert_eq!(which(&r, "/users").as_deref(), Some("/users/..."));
        assert_eq!(which(&r, "/users/admin").as_deref(), Some("/users/admin"));
        assert_eq!(which(&r, "/users/1").as_deref(), Some("/users/:id"));
        assert_eq!(which(&r, "/users/1/edit").as_deref(), Some("/users/:id/edit"));
        assert_eq!(which(&r, "/users/1/edit/cart").as_deref(), Some("/users/..."));
        let exact = router(&["/cart"]);
        assert_eq!(which(&exact, "/cart").as_deref(), Some("/cart"));
        assert_eq!(which(&exact, "/cart/").as_deref(), Some("/cart"));
        assert_eq!(which(&exact, "/cart/checkout"), None);
        assert_eq!(which(&exact, "/"), None);
    }

    #[test]
    fn headers_as_spin_gives_them() {
        let r = router(&["/users/:userid/cart/..."]);
        let m = r.route("/users/1/cart/items/3/edit").unwrap();
        let client: std::net::SocketAddr = "127.0.0.1:53152".parse().unwrap();
        let h = m.headers("http://example.com:8080/users/1/cart/items/3/edit?theme=pink", Some(client));
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("spin-full-url"), Some("http://example.com:8080/users/1/cart/items/3/edit?theme=pink"));
        assert_eq!(get("spin-path-info"), Some("/items/3/edit"));
        assert_eq!(get("spin-matched-route"), Some("/users/:userid/cart/..."));
        assert_eq!(get("spin-raw-component-route"), Some("/users/:userid/cart/..."));
        assert_eq!(get("spin-component-route"), Some("/users/:userid/cart"));
        assert_eq!(get("spin-path-match-userid"), Some("1"));
        assert_eq!(get("spin-client-addr"), Some("127.0.0.1:53152"));
        assert_eq!(get("spin-base-path"), Some("/"));
        let all = router(&["/..."]);
        let m = all.route("/a/b/").unwrap();
        assert_eq!(m.path_info, "/a/b/");
        assert_eq!(m.headers("", None).iter().find(|(n, _)| n == "spin-component-route").unwrap().1, "");
    }

    #[test]
    fn bad_routes_are_refused() {
        assert!(Pattern::parse("users").unwrap_err().contains("starts with '/'"));
        assert!(Pattern::parse("/a/.../b").unwrap_err().contains("may only end"));
        assert!(Pattern::parse("/a/:").unwrap_err().contains("needs a name"));
        let t =
            |r: &str| HttpTrigger { route: Some(Pattern::parse(r).unwrap()), target: Target::Component("c".into()) };
        let e = Router::new(&[t("/users/:id"), t("/users/:name")]).unwrap_err();
        assert!(e.contains("trigger.http[1]") && e.contains("trigger.http[0]"), "{e}");
        let e = Router::new(&[t("/.well-known/spin/health")]).unwrap_err();
        assert!(e.contains("reserves"), "{e}");
    }
}
