//! Checks on what a client sends to create a user.

use serde_json::Value;

use svc_common::http::short;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: String,
    pub password: String,
}

/// A password is a SHA-1 digest in hex: exactly 40 hex digits, either case.
pub fn password_ok(p: &str) -> bool {
    p.len() == 40 && p.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadUser(pub String);

pub fn new_user(body: &[u8]) -> Result<NewUser, BadUser> {
    let v: Value = serde_json::from_slice(body).map_err(|e| BadUser(format!("body is not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| BadUser("body must be a JSON object".into()))?;
    let field = |name: &str| -> Result<String, BadUser> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(BadUser(format!("{name} must be a string"))),
            None => Err(BadUser(format!("missing field {name}"))),
        }
    };
    let username = field("username")?;
    let password = field("password")?;
    // An empty name could never be addressed by DELETE /api/v1/users/{username}.
    if username.is_empty() {
        return Err(BadUser("username must not be empty".into()));
    }
    if !password_ok(&password) {
        return Err(BadUser(format!("password {:?} is not exactly 40 hex digits", short(&password))));
    }
    Ok(NewUser { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX40: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";

    #[test]
    fn password_rules() {
        assert!(password_ok(HEX40));
        assert!(password_ok(&HEX40.to_uppercase()));
        assert!(password_ok("aBcDeF0123456789aBcDeF0123456789aBcDeF01"));
        assert!(!password_ok(&HEX40[..39]));
        assert!(!password_ok(&format!("{HEX40}0")));
        assert!(!password_ok("g725109c7e7c0bfb9d709836735b56d943d263f0"));
        assert!(!password_ok(""));
        // 40 bytes but not 40 hex digits.
        assert!(!password_ok("é725109c7e7c0bfb9d709836735b56d943d263f"));
    }

    #[test]
    fn bodies() {
        let ok = new_user(format!(r#"{{"username":"ann","password":"{HEX40}"}}"#).as_bytes()).unwrap();
        assert_eq!(ok.username, "ann");
        assert!(new_user(b"not json").is_err());
        assert!(new_user(b"[]").is_err());
        assert!(new_user(format!(r#"{{"password":"{HEX40}"}}"#).as_bytes()).is_err());
        assert!(new_user(format!(r#"{{"username":5,"password":"{HEX40}"}}"#).as_bytes()).is_err());
        assert!(new_user(format!(r#"{{"username":"","password":"{HEX40}"}}"#).as_bytes()).is_err());
        assert!(new_user(br#"{"username":"ann","password":1e400}"#).is_err());
        assert!(new_user(br#"{"username":"ann","password":"abc"}"#).is_err());
    }

    #[test]
    fn long_values_are_not_echoed() {
        let long = "x".repeat(100_000);
        let e = new_user(format!(r#"{{"username":"a","password":"{long}"}}"#).as_bytes()).unwrap_err();
        assert!(e.0.len() < 200);
    }
}
