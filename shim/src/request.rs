//! Turns one CNI invocation (the CNI_* environment and stdin) into either the VERSION answer, a
//! validated request for flatnetd, or the CNI error to print. Pure: the environment comes in as a map
//! and stdin as a reader, so every rule is unit-tested without touching the process.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;

use flatnet_proto::cni::{
    parse_cni_args, unsupported_version_msg, validate_container_id, validate_ifname,
    version_at_least, CniError, Code, LATEST_VERSION, MAX_CONFIG_BYTES, SUPPORTED_VERSIONS,
};
use flatnet_proto::v1::Command;
use flatnet_proto::DEFAULT_SOCKET;
use serde_json::{Map, Value};

/// The CNI_* variables of the invocation. Values stay `OsString` so that a value that is not UTF-8
/// is reported as such instead of being silently mangled.
pub type Env = HashMap<String, OsString>;

/// What the shim has to do for this invocation.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// VERSION, answered locally: the JSON document to print.
    Version(String),
    /// ADD, DEL, CHECK, GC or STATUS, to forward to flatnetd.
    Exec(Request),
}

/// A request that passed every check the shim can make on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// The config's cniVersion (always one of `SUPPORTED_VERSIONS`).
    pub cni_version: String,
    /// The daemon's socket: the config's `socket` key or `DEFAULT_SOCKET`.
    pub socket: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    /// stdin exactly as the runtime wrote it.
    pub config: Vec<u8>,
}

/// Applies the rules in order: CNI_COMMAND, then stdin (size, JSON, cniVersion, `socket`), then the
/// CNI_* variables the command needs. stdin is read only once CNI_COMMAND is known to be valid.
pub fn parse(env: &Env, stdin: impl Read) -> Result<Invocation, CniError> {
    let command = command(env)?;
    let config = read_config(stdin)?;
    let Some(command) = command else {
        return version_reply(&config).map(Invocation::Version);
    };
    let (cni_version, socket) = check_config(command, &config)?;
    let vars = check_env(command, env)
        .map_err(|msg| CniError::new(&cni_version, Code::InvalidEnvironment, msg))?;
    Ok(Invocation::Exec(Request {
        command,
        cni_version,
        socket,
        container_id: vars.container_id,
        netns: vars.netns,
        ifname: vars.ifname,
        args: vars.args,
        path: vars.path,
        config,
    }))
}

/// `None` for VERSION, else the command to forward.
fn command(env: &Env) -> Result<Option<Command>, CniError> {
    let invalid = |msg: String| CniError::new(LATEST_VERSION, Code::InvalidEnvironment, msg);
    let Some(raw) = env.get("CNI_COMMAND").filter(|v| !v.is_empty()) else {
        return Err(invalid(
            "CNI_COMMAND is not set: flatnet is a CNI plugin, run by a container runtime with CNI_COMMAND set to ADD, DEL, CHECK, GC, STATUS or VERSION".into(),
        ));
    };
    let name = raw.to_string_lossy();
    if name == "VERSION" {
        return Ok(None);
    }
    Command::from_cni_name(&name).map(Some).ok_or_else(|| {
            invalid(format!(
                "CNI_COMMAND {name:?} is not a CNI command flatnet knows (ADD, DEL, CHECK, GC, STATUS, VERSION)"
            ))
        })
}

/// Reads at most `MAX_CONFIG_BYTES` (one byte more tells that there was more).
fn read_config(stdin: impl Read) -> Result<Vec<u8>, CniError> {
    let mut config = Vec::new();
    stdin
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut config)
        .map_err(|e| {
            CniError::new(
                LATEST_VERSION,
                Code::Io,
                format!("cannot read the network config from stdin: {e}"),
            )
        })?;
    if config.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            LATEST_VERSION,
            Code::Decode,
            format!(
                "the network config on stdin is larger than 1 MiB ({MAX_CONFIG_BYTES} bytes), the most flatnet accepts"
            ),
        ));
    }
    Ok(config)
}

/// The VERSION answer: the requested cniVersion if flatnet speaks it, else the latest one. Empty stdin
/// is allowed (runtimes and people probe plugins that way); stdin that is not JSON is not.
fn version_reply(config: &[u8]) -> Result<String, CniError> {
    let requested = if config.trim_ascii().is_empty() {
        None
    } else {
        let value: Value = serde_json::from_slice(config).map_err(|e| {
            CniError::new(
                LATEST_VERSION,
                Code::Decode,
                format!("cannot decode the VERSION request on stdin as JSON: {e}"),
            )
        })?;
        value
            .get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let version = requested
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    Ok(serde_json::json!({
        "cniVersion": version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string())
}

/// Checks what the shim itself needs from the config: a cniVersion it speaks that is new enough for
/// the command, and where the daemon listens. Everything else is the daemon's to judge.
fn check_config(command: Command, config: &[u8]) -> Result<(String, String), CniError> {
    let name = command.cni_name();
    let map: Map<String, Value> = serde_json::from_slice(config).map_err(|e| {
        CniError::new(
            LATEST_VERSION,
            Code::Decode,
            format!("cannot decode the network config on stdin as a JSON object: {e}"),
        )
    })?;
    let invalid = |msg: String| CniError::new(LATEST_VERSION, Code::InvalidConfig, msg);

    let version = match map.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "\"cniVersion\" in the network config must be a string such as \"1.0.0\", not {}",
                json_kind(other)
            )))
        }
        None => {
            return Err(invalid(
                "the network config has no \"cniVersion\" (e.g. \"cniVersion\": \"1.0.0\")".into(),
            ))
        }
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            LATEST_VERSION,
            Code::IncompatibleVersion,
            unsupported_version_msg(&version),
        ));
    }
    let min = command.min_version();
    if !version_at_least(&version, min) {
        return Err(CniError::new(
            &version,
            Code::IncompatibleVersion,
            format!(
                "CNI command {name} needs cniVersion {min} or newer, but the network config says {version}"
            ),
        ));
    }

    // From here on the error JSON carries the config's own version.
    let invalid = |msg: String| CniError::new(&version, Code::InvalidConfig, msg);
    let socket = match map.get("socket") {
        None => DEFAULT_SOCKET.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(invalid(format!(
                "\"socket\" in the network config is empty: give flatnetd's socket path, or leave the key out for {DEFAULT_SOCKET}"
            )))
        }
        Some(other) => {
            return Err(invalid(format!(
                "\"socket\" in the network config must be a string (flatnetd's socket path), not {}",
                json_kind(other)
            )))
        }
    };
    Ok((version, socket))
}

/// "a number", "an object", …: for messages, so a huge value is never echoed back.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The CNI_* values forwarded to the daemon (empty when the command does not use them).
#[derive(Debug, Default)]
struct Vars {
    container_id: String,
    netns: String,
    ifname: String,
    args: String,
    path: String,
}

/// Checks the variables `command` needs; the error is the message for code 4.
fn check_env(command: Command, env: &Env) -> Result<Vars, String> {
    let name = command.cni_name();
    let (needs_container, needs_netns) = match command {
        Command::Add | Command::Check => (true, true),
        Command::Del => (true, false),
        Command::Gc | Command::Status | Command::Unspecified => (false, false),
    };
    let mut vars = Vars::default();
    if needs_container {
        vars.container_id = required(env, "CNI_CONTAINERID", name)?;
        validate_container_id(&vars.container_id).map_err(|e| e.to_string())?;
        vars.netns = if needs_netns {
            required(env, "CNI_NETNS", name)?
        } else {
            optional(env, "CNI_NETNS")?
        };
        vars.ifname = required(env, "CNI_IFNAME", name)?;
        validate_ifname("CNI_IFNAME", &vars.ifname).map_err(|e| e.to_string())?;
    }
    vars.path = required(env, "CNI_PATH", name)?;
    if needs_container {
        vars.args = optional(env, "CNI_ARGS")?;
        parse_cni_args(&vars.args).map_err(|e| e.to_string())?;
    }
    Ok(vars)
}

/// A variable that must be set and non-empty.
fn required(env: &Env, var: &str, command: &str) -> Result<String, String> {
    let value = optional(env, var)?;
    if value.is_empty() {
        return Err(format!(
            "{var} is not set: the runtime must set it for {command}"
        ));
    }
    Ok(value)
}

/// A variable that may be missing or empty (both read as "").
fn optional(env: &Env, var: &str) -> Result<String, String> {
    match env.get(var) {
        None => Ok(String::new()),
        Some(value) => value
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{var} is not valid UTF-8: {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Podman 4.3.1's ADD as captured: the CNI_* variables, then `stdin: ...`.
    const PODMAN_ADD: &str = include_str!("../../tests/fixtures/podman-4.3.1/03-ADD.txt");

    /// The captured ADD's environment, in the order captured.
    fn podman_add_env() -> Vec<(&'static str, &'static str)> {
        let lines = PODMAN_ADD.lines().filter_map(|l| l.split_once('='));
        lines.filter(|(k, _)| k.starts_with("CNI_")).collect()
    }

    /// The stdin of that ADD (a constant for the table below; checked against the capture).
    const PODMAN_ADD_STDIN: &str = r#"{"bridge":"dumpbr0","capabilities":{"ips":true},"cniVersion":"1.0.0","ipam":{"routes":[{"dst":"0.0.0.0/0"}],"subnet":"10.254.7.0/24","type":"host-local"},"isGateway":true,"name":"dumpnet","type":"dumpcni"}"#;

    /// The Podman ADD environment with `changes` applied: `Some(v)` sets, `None` removes.
    fn env(changes: &[(&str, Option<&str>)]) -> Env {
        let mut env: Env = podman_add_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        for (k, v) in changes {
            match v {
                Some(v) => env.insert(k.to_string(), OsString::from(v)),
                None => env.remove(*k),
            };
        }
        env
    }

    fn parse_str(env: &Env, stdin: &str) -> Result<Invocation, CniError> {
        parse(env, stdin.as_bytes())
    }

    #[test]
    fn the_add_is_the_captured_one() {
        let captured = PODMAN_ADD.lines().find_map(|l| l.strip_prefix("stdin: "));
        assert_eq!(captured, Some(PODMAN_ADD_STDIN));
        assert_eq!(podman_add_env().len(), 6);
    }

    #[test]
    fn podman_add_becomes_a_request() {
        let got = parse_str(&env(&[]), PODMAN_ADD_STDIN).expect("the fixture is valid");
        let Invocation::Exec(req) = got else {
            panic!("ADD must be forwarded, got {got:?}");
        };
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.cni_version, "1.0.0");
        assert_eq!(req.socket, DEFAULT_SOCKET);
        assert_eq!(req.container_id, podman_add_env()[2].1);
        assert_eq!(req.netns, podman_add_env()[4].1);
        assert_eq!(req.ifname, "eth0");
        assert_eq!(req.args, podman_add_env()[0].1);
        assert_eq!(req.path, "/opt/cni/bin:/usr/lib/cni");
        assert_eq!(req.config, PODMAN_ADD_STDIN.as_bytes());
    }

    #[test]
    fn socket_key_and_per_command_env() {
        let stdin =
            r#"{"cniVersion":"1.1.0","name":"flatnet","type":"flatnet","socket":"/tmp/x.sock"}"#;
        // GC and STATUS need only CNI_PATH and forward nothing else.
        let minimal = |cmd: &str| {
            [("CNI_COMMAND", cmd), ("CNI_PATH", "/opt/cni/bin")]
                .iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect::<Env>()
        };
        for (cmd, command) in [("GC", Command::Gc), ("STATUS", Command::Status)] {
            let Ok(Invocation::Exec(req)) = parse_str(&minimal(cmd), stdin) else {
                panic!("{cmd} with only CNI_PATH must be forwarded");
            };
            assert_eq!(req.command, command);
            assert_eq!(req.socket, "/tmp/x.sock");
            assert_eq!(req.cni_version, "1.1.0");
            assert_eq!(req.container_id, "");
            assert_eq!(req.path, "/opt/cni/bin");
        }
        // DEL may come without a namespace (the container is already gone).
        let del = env(&[("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", None)]);
        let Ok(Invocation::Exec(req)) = parse_str(&del, PODMAN_ADD_STDIN) else {
            panic!("DEL without CNI_NETNS must be forwarded");
        };
        assert_eq!((req.command, req.netns.as_str()), (Command::Del, ""));
        // CHECK is forwarded from 0.4.0 on.
        let check = env(&[("CNI_COMMAND", Some("CHECK"))]);
        let stdin = r#"{"cniVersion":"0.4.0","name":"n","type":"flatnet"}"#;
        assert!(
            matches!(parse_str(&check, stdin), Ok(Invocation::Exec(r)) if r.command == Command::Check)
        );
        // An empty CNI_ARGS is fine.
        let no_args = env(&[("CNI_ARGS", Some(""))]);
        assert!(matches!(
            parse_str(&no_args, PODMAN_ADD_STDIN),
            Ok(Invocation::Exec(_))
        ));
    }

    #[test]
    fn version_is_answered_locally() {
        let version = env(&[("CNI_COMMAND", Some("VERSION"))]);
        let all = r#"["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]"#;
        for (stdin, answered) in [
            (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
            (r#"{"cniVersion":"0.3.1"}"#, "0.3.1"),
            ("", LATEST_VERSION),
            (" \n", LATEST_VERSION),
            (r#"{"cniVersion":"0.2.0"}"#, LATEST_VERSION),
            (r#"{"cniVersion":7}"#, LATEST_VERSION),
            ("{}", LATEST_VERSION),
        ] {
            let want = format!(r#"{{"cniVersion":"{answered}","supportedVersions":{all}}}"#);
            let got = parse_str(&version, stdin);
            assert_eq!(got, Ok(Invocation::Version(want)), "stdin {stdin:?}");
        }
        // VERSION needs none of the other variables.
        let bare: Env = [("CNI_COMMAND".to_string(), OsString::from("VERSION"))].into();
        assert!(matches!(parse_str(&bare, ""), Ok(Invocation::Version(_))));
    }

    /// One row per rule: what changes in the Podman ADD env, the stdin, the code and the cniVersion
    /// expected in the error, and a piece of the message.
    struct Case {
        name: &'static str,
        env: &'static [(&'static str, Option<&'static str>)],
        stdin: &'static str,
        code: u32,
        version: &'static str,
        msg: &'static str,
    }

    const ADD_STDIN: &str = PODMAN_ADD_STDIN;
    const V100: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"flatnet"}"#;
    const V110: &str = r#"{"cniVersion":"1.1.0","name":"n","type":"flatnet"}"#;

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        // 1. CNI_COMMAND
        Case { name: "no CNI_COMMAND", env: &[("CNI_COMMAND", None)], stdin: ADD_STDIN, code: 4, version: LATEST_VERSION, msg: "CNI_COMMAND is not set" },
        Case { name: "empty CNI_COMMAND", env: &[("CNI_COMMAND", Some(""))], stdin: ADD_STDIN, code: 4, version: LATEST_VERSION, msg: "CNI_COMMAND is not set" },
        Case { name: "unknown CNI_COMMAND", env: &[("CNI_COMMAND", Some("UP"))], stdin: ADD_STDIN, code: 4, version: LATEST_VERSION, msg: "\"UP\"" },
        Case { name: "lower-case command", env: &[("CNI_COMMAND", Some("add"))], stdin: ADD_STDIN, code: 4, version: LATEST_VERSION, msg: "\"add\"" },
        Case { name: "VERSION, stdin not JSON", env: &[("CNI_COMMAND", Some("VERSION"))], stdin: "{cniVersion", code: 6, version: LATEST_VERSION, msg: "as JSON" },
        // 2. stdin
        Case { name: "empty stdin", env: &[], stdin: "", code: 6, version: LATEST_VERSION, msg: "EOF while parsing" },
        Case { name: "not JSON", env: &[], stdin: "cniVersion=1.0.0", code: 6, version: LATEST_VERSION, msg: "expected value" },
        Case { name: "truncated JSON", env: &[], stdin: r#"{"cniVersion":"1.0.0""#, code: 6, version: LATEST_VERSION, msg: "EOF while parsing" },
        Case { name: "JSON array", env: &[], stdin: r#"[{"cniVersion":"1.0.0"}]"#, code: 6, version: LATEST_VERSION, msg: "invalid type: sequence" },
        Case { name: "JSON string", env: &[], stdin: r#""1.0.0""#, code: 6, version: LATEST_VERSION, msg: "invalid type: string" },
        Case { name: "trailing garbage", env: &[], stdin: r#"{"cniVersion":"1.0.0"} x"#, code: 6, version: LATEST_VERSION, msg: "trailing characters" },
        Case { name: "no cniVersion", env: &[], stdin: r#"{"name":"n"}"#, code: 7, version: LATEST_VERSION, msg: "no \"cniVersion\"" },
        Case { name: "numeric cniVersion", env: &[], stdin: r#"{"cniVersion":1.0}"#, code: 7, version: LATEST_VERSION, msg: "not a number" },
        Case { name: "null cniVersion", env: &[], stdin: r#"{"cniVersion":null}"#, code: 7, version: LATEST_VERSION, msg: "not null" },
        Case { name: "cniVersion 0.2.0", env: &[], stdin: r#"{"cniVersion":"0.2.0"}"#, code: 1, version: LATEST_VERSION, msg: "cniVersion \"0.2.0\" is not supported" },
        Case { name: "cniVersion 2.0.0", env: &[], stdin: r#"{"cniVersion":"2.0.0"}"#, code: 1, version: LATEST_VERSION, msg: "is not supported" },
        Case { name: "empty cniVersion", env: &[], stdin: r#"{"cniVersion":""}"#, code: 1, version: LATEST_VERSION, msg: "is not supported" },
        Case { name: "CHECK at 0.3.1", env: &[("CNI_COMMAND", Some("CHECK"))], stdin: r#"{"cniVersion":"0.3.1"}"#, code: 1, version: "0.3.1", msg: "CHECK needs cniVersion 0.4.0" },
        Case { name: "GC at 1.0.0", env: &[("CNI_COMMAND", Some("GC"))], stdin: V100, code: 1, version: "1.0.0", msg: "GC needs cniVersion 1.1.0" },
        Case { name: "STATUS at 1.0.0", env: &[("CNI_COMMAND", Some("STATUS"))], stdin: V100, code: 1, version: "1.0.0", msg: "STATUS needs cniVersion 1.1.0" },
        Case { name: "socket a number", env: &[], stdin: r#"{"cniVersion":"1.0.0","socket":5}"#, code: 7, version: "1.0.0", msg: "\"socket\"" },
        Case { name: "socket an object", env: &[], stdin: r#"{"cniVersion":"0.4.0","socket":{}}"#, code: 7, version: "0.4.0", msg: "not an object" },
        Case { name: "socket empty", env: &[], stdin: r#"{"cniVersion":"1.0.0","socket":""}"#, code: 7, version: "1.0.0", msg: "is empty" },
        // stdin is judged before the environment.
        Case { name: "bad JSON beats missing env", env: &[("CNI_CONTAINERID", None)], stdin: "nope", code: 6, version: LATEST_VERSION, msg: "decode" },
        Case { name: "bad version beats missing env", env: &[("CNI_PATH", None)], stdin: r#"{"cniVersion":"0.1.0"}"#, code: 1, version: LATEST_VERSION, msg: "not supported" },
        // 3. environment, ADD
        Case { name: "ADD without CNI_CONTAINERID", env: &[("CNI_CONTAINERID", None)], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_CONTAINERID is not set" },
        Case { name: "ADD with bad CNI_CONTAINERID", env: &[("CNI_CONTAINERID", Some("-abc"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_CONTAINERID \"-abc\" is invalid" },
        Case { name: "ADD with slash in CNI_CONTAINERID", env: &[("CNI_CONTAINERID", Some("a/../b"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_CONTAINERID" },
        Case { name: "ADD without CNI_NETNS", env: &[("CNI_NETNS", None)], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_NETNS is not set" },
        Case { name: "ADD with empty CNI_NETNS", env: &[("CNI_NETNS", Some(""))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_NETNS is not set" },
        Case { name: "ADD without CNI_IFNAME", env: &[("CNI_IFNAME", None)], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_IFNAME is not set" },
        Case { name: "ADD with long CNI_IFNAME", env: &[("CNI_IFNAME", Some("sixteen-chars-xx"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_IFNAME \"sixteen-chars-xx\" is not a valid interface name" },
        Case { name: "ADD with slash in CNI_IFNAME", env: &[("CNI_IFNAME", Some("eth/0"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "not a valid interface name" },
        Case { name: "ADD without CNI_PATH", env: &[("CNI_PATH", None)], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_PATH is not set" },
        Case { name: "ADD with short IP", env: &[("CNI_ARGS", Some("IP=10.87.1"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_ARGS IP=\"10.87.1\"" },
        Case { name: "ADD with bad MAC", env: &[("CNI_ARGS", Some("MAC=01:00:5e:00:00:01"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_ARGS MAC" },
        Case { name: "ADD with unknown arg", env: &[("CNI_ARGS", Some("FOO=bar"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "IgnoreUnknown=1" },
        Case { name: "ADD with arg without =", env: &[("CNI_ARGS", Some("IgnoreUnknown"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "KEY=VALUE" },
        // 3. environment, CHECK and DEL
        Case { name: "CHECK without CNI_NETNS", env: &[("CNI_COMMAND", Some("CHECK")), ("CNI_NETNS", None)], stdin: V100, code: 4, version: "1.0.0", msg: "CNI_NETNS is not set: the runtime must set it for CHECK" },
        Case { name: "CHECK with bad CNI_ARGS", env: &[("CNI_COMMAND", Some("CHECK")), ("CNI_ARGS", Some("IP=x"))], stdin: V100, code: 4, version: "1.0.0", msg: "CNI_ARGS IP" },
        Case { name: "DEL without CNI_CONTAINERID", env: &[("CNI_COMMAND", Some("DEL")), ("CNI_CONTAINERID", None)], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_CONTAINERID is not set: the runtime must set it for DEL" },
        Case { name: "DEL without CNI_IFNAME", env: &[("CNI_COMMAND", Some("DEL")), ("CNI_IFNAME", None)], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_IFNAME is not set" },
        Case { name: "DEL without CNI_PATH", env: &[("CNI_COMMAND", Some("DEL")), ("CNI_PATH", Some(""))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_PATH is not set" },
        Case { name: "DEL with bad CNI_ARGS", env: &[("CNI_COMMAND", Some("DEL")), ("CNI_ARGS", Some("IP=10.87.1"))], stdin: ADD_STDIN, code: 4, version: "1.0.0", msg: "CNI_ARGS IP" },
        // 3. environment, GC and STATUS
        Case { name: "GC without CNI_PATH", env: &[("CNI_COMMAND", Some("GC")), ("CNI_PATH", None)], stdin: V110, code: 4, version: "1.1.0", msg: "CNI_PATH is not set: the runtime must set it for GC" },
        Case { name: "STATUS without CNI_PATH", env: &[("CNI_COMMAND", Some("STATUS")), ("CNI_PATH", None)], stdin: V110, code: 4, version: "1.1.0", msg: "CNI_PATH is not set" },
    ];

    #[test]
    fn bad_input_gets_the_right_code() {
        for case in CASES {
            let err = match parse_str(&env(case.env), case.stdin) {
                Err(err) => err,
                Ok(got) => panic!("{}: expected code {}, got {got:?}", case.name, case.code),
            };
            assert_eq!(err.code, case.code, "{}: {}", case.name, err.msg);
            assert_eq!(
                err.cni_version, case.version,
                "{}: cniVersion in the error",
                case.name
            );
            assert!(
                err.msg.contains(case.msg),
                "{}: message {:?} should contain {:?}",
                case.name,
                err.msg,
                case.msg
            );
        }
    }

    #[test]
    fn unused_variables_are_not_checked() {
        // GC and STATUS ignore the container variables, however odd they are.
        let gc = env(&[
            ("CNI_COMMAND", Some("GC")),
            ("CNI_CONTAINERID", Some("-bad")),
            ("CNI_IFNAME", Some("a/b")),
            ("CNI_ARGS", Some("IP=x")),
        ]);
        assert!(matches!(parse_str(&gc, V110), Ok(Invocation::Exec(_))));
    }

    #[test]
    fn oversized_stdin_is_refused() {
        let add = env(&[]);
        let big = vec![b' '; MAX_CONFIG_BYTES + 1];
        let err = parse(&add, &big[..]).expect_err("more than 1 MiB");
        assert_eq!((err.code, err.cni_version.as_str()), (6, LATEST_VERSION));
        assert!(err.msg.contains("larger than 1 MiB"), "{}", err.msg);
        // VERSION reads stdin under the same limit.
        let version = env(&[("CNI_COMMAND", Some("VERSION"))]);
        assert_eq!(parse(&version, &big[..]).map_err(|e| e.code), Err(6));
        // Exactly the limit is still read (and then judged as JSON).
        let mut padded = PODMAN_ADD_STDIN.as_bytes().to_vec();
        padded.resize(MAX_CONFIG_BYTES, b' ');
        assert!(matches!(parse(&add, &padded[..]), Ok(Invocation::Exec(_))));
    }

    #[test]
    fn unreadable_stdin_is_an_io_error() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let err = parse(&env(&[]), Broken).expect_err("stdin fails");
        assert_eq!(err.code, 5);
        assert!(err.msg.contains("boom"));
    }

    #[test]
    fn missing_command_does_not_read_stdin() {
        struct Untouchable;
        impl Read for Untouchable {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("stdin must not be read when CNI_COMMAND is missing");
            }
        }
        let err = parse(&env(&[("CNI_COMMAND", None)]), Untouchable).expect_err("no command");
        assert_eq!(err.code, 4);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_variable_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let mut env = env(&[]);
        env.insert(
            "CNI_NETNS".into(),
            OsString::from_vec(b"/run/netns/\xff".to_vec()),
        );
        let err = parse_str(&env, PODMAN_ADD_STDIN).expect_err("not UTF-8");
        assert_eq!(err.code, 4);
        assert!(
            err.msg.starts_with("CNI_NETNS is not valid UTF-8"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn command_names_round_trip() {
        for command in Command::SERVED {
            assert_eq!(Command::from_cni_name(command.cni_name()), Some(command));
        }
        assert_eq!(Command::from_cni_name("VERSION"), None);
        assert_eq!(Command::from_cni_name("UNSPECIFIED"), None);
    }
}
