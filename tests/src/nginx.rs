//! A private nginx in a test's namespace: a master and one worker (so a reload works as it does
//! for a packaged nginx), stopped with SIGTERM on drop, which takes the worker with it; its pid
//! file, logs and temp paths in a directory of its own.

use crate::{Background, Netns};
use std::fs;
use std::path::{Path, PathBuf};

pub struct Nginx {
    process: Background,
    error_log: PathBuf,
    conf: PathBuf,
    dir: PathBuf,
}

/// A whole nginx.conf for a private nginx in `dir` (pid file, error log and temp paths there, a
/// master and one worker): `main` (e.g. `load_module` lines) first, `http` inside `http {}`.
pub fn conf(dir: &Path, main: &str, http: &str) -> String {
    let d = dir.to_str().expect("temp dir paths are UTF-8");
    format!(
        "{main}\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n\
         {http}\
         }}\n"
    )
}

/// The `load_module` lines of Debian's libnginx-mod-http-lua (lua-nginx-module and the
/// development kit it needs).
pub const LUA_MODULES: &str = "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n\
                               load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n";

/// For a test through the OpenResty module: nginx, curl and lua-nginx-module, or [`crate::unmet`].
pub fn require_openresty() {
    crate::require_tool("nginx", "nginx-light");
    crate::require_tool("curl", "curl");
    if !lua_module_installed() {
        crate::unmet("needs lua-nginx-module: apt-get install libnginx-mod-http-lua");
    }
}

/// Whether Debian's libnginx-mod-http-lua is installed.
pub fn lua_module_installed() -> bool {
    Path::new("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists()
}

/// The shipped OpenResty example (deploy/openresty/nginx.conf, the module from that directory),
/// reading the route table from `127.0.0.1:<routes_port>` and listening on `listen`.
pub fn openresty_example(routes_port: u16, listen: &str) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/openresty");
    let example = fs::read_to_string(format!("{dir}/nginx.conf")).expect("the shipped example");
    let conf = example
        .replace("/usr/local/share/flatnet/?.lua", &format!("{dir}/?.lua"))
        .replace("port = 8787", &format!("port = {routes_port}"))
        .replace("listen 127.0.0.1:8080;", &format!("listen {listen};"));
    assert_ne!(
        conf, example,
        "the example has the lines that are replaced here"
    );
    conf
}

impl Nginx {
    /// Starts nginx in `netns` with `http` (server blocks, `include` lines) inside its `http {}`
    /// block; `dir` holds everything else.
    pub fn start(netns: &Netns, dir: &Path, http: &str) -> Nginx {
        Nginx::start_with(netns, dir, "", http)
    }

    /// [`Nginx::start`] with `main` (e.g. `load_module` lines) before everything else.
    pub fn start_with(netns: &Netns, dir: &Path, main: &str, http: &str) -> Nginx {
        fs::create_dir_all(dir).expect("the host temp dir is writable");
        let conf = conf(dir, main, http);
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).expect("the host temp dir is writable");
        let error_log = dir.join("error.log");
        let d = dir.to_str().expect("temp dir paths are UTF-8");
        let process = netns.spawn(&[
            "nginx",
            "-p",
            d,
            "-e",
            error_log.to_str().expect("temp dir paths are UTF-8"),
            "-c",
            conf_path.to_str().expect("temp dir paths are UTF-8"),
            "-g",
            "daemon off;",
        ]);
        Nginx {
            process,
            error_log,
            conf: conf_path,
            dir: dir.to_path_buf(),
        }
    }

    /// The command that makes this nginx read its configuration again (for `--reload`), run in
    /// its namespace by the caller.
    pub fn reload_command(&self) -> String {
        format!(
            "nginx -p {} -c {} -s reload",
            self.dir.display(),
            self.conf.display()
        )
    }

    /// Panics if nginx has exited (e.g. it could not bind); see [`Nginx::error_log`] for why.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// What nginx wrote to its error log so far.
    pub fn error_log(&self) -> String {
        fs::read_to_string(&self.error_log).unwrap_or_else(|e| format!("<no error log: {e}>"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master stops its worker before it exits; a killed master would leave it running.
        self.process.terminate(std::time::Duration::from_secs(5));
    }
}
