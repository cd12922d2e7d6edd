-- flatnet.lua: OpenResty (lua-nginx-module) follows flatnetd's route table without reloads.
--
-- One timer (in worker 0) long-polls flatnetd's `GET /routes?format=lines` (flatnetd
-- --routes-listen) and keeps the table in a lua_shared_dict every worker reads; a request for
-- `Host: NAME.DOMAIN` or `/NAME/...` goes to that route's address and port when it is up, gets
-- 502 when it is not, 404 when nobody has the name. See nginx.conf beside this file.

local _M = {}

local DICT = "flatnet_routes"

local function dict()
    local d = ngx.shared[DICT]
    if not d then
        error("flatnet.lua needs `lua_shared_dict " .. DICT .. " 1m;` in the http block")
    end
    return d
end

-- Reads one answer of `GET /routes?format=lines[&after=REV&wait=MS]`: the revision and
-- {name = "address:port state"}; nil and why on failure.
local function fetch(host, port, after, wait_ms)
    local sock = ngx.socket.tcp()
    sock:settimeout(wait_ms + 5000)
    local ok, err = sock:connect(host, port)
    if not ok then
        return nil, "connect " .. host .. ":" .. port .. ": " .. tostring(err)
    end
    local path = "/routes?format=lines"
    if after > 0 then
        path = path .. "&after=" .. after .. "&wait=" .. wait_ms
    end
    ok, err = sock:send("GET " .. path .. " HTTP/1.0\r\nHost: flatnetd\r\n\r\n")
    if not ok then
        sock:close()
        return nil, "send: " .. tostring(err)
    end
    local status = sock:receive("*l")
    if not status or not status:match("^HTTP/1%.%d 200") then
        sock:close()
        return nil, "answer: " .. tostring(status)
    end
    repeat
        local header = sock:receive("*l")
        if not header then
            sock:close()
            return nil, "headers ended early"
        end
    until header == ""
    local revision, routes = nil, {}
    while true do
        local line = sock:receive("*l")
        if not line then
            break
        end
        local rev = line:match("^revision (%d+)$")
        if rev then
            revision = tonumber(rev)
        else
            -- One route per name: an up one over one that is not.
            local name, address, rport, state = line:match("^(%S+) (%S+) (%d+) (%a+)$")
            local key = name and name:lower()
            if key and (not routes[key] or state == "up") then
                if address:find(":", 1, true) then
                    address = "[" .. address .. "]"
                end
                routes[key] = address .. ":" .. rport .. " " .. state
            end
        end
    end
    sock:close()
    if not revision then
        return nil, "no revision in the answer"
    end
    return revision, routes
end

-- Replaces the dict's routes with `routes` (names gone are deleted).
local function store(revision, routes)
    local d = dict()
    for _, key in ipairs(d:get_keys(0)) do
        if key:sub(1, 2) == "r:" and not routes[key:sub(3)] then
            d:delete(key)
        end
    end
    for name, value in pairs(routes) do
        d:set("r:" .. name, value)
    end
    d:set("revision", revision)
end

-- Starts following flatnetd at host:port (call from init_worker_by_lua_block).
function _M.start(opts)
    local host = opts.host or "127.0.0.1"
    local port = opts.port or 8787
    if ngx.worker.id() ~= 0 then
        return
    end
    local after = 0
    local follow
    follow = function(premature)
        if premature then
            return
        end
        local revision, routes = fetch(host, port, after, 30000)
        local delay = 0
        if revision then
            if revision < after then
                -- flatnetd restarted: its revisions start again.
                revision, routes = fetch(host, port, 0, 0)
            end
            if revision then
                store(revision, routes)
                after = revision
            end
        else
            ngx.log(ngx.WARN, "flatnet: cannot read the route table: ", routes, "; retrying in 1 s")
            after = 0
            delay = 1
        end
        local ok, err = ngx.timer.at(delay, follow)
        if not ok then
            ngx.log(ngx.ERR, "flatnet: cannot schedule the next poll: ", err)
        end
    end
    ngx.timer.at(0, follow)
end

-- Chooses the upstream of this request (call from access_by_lua_block): sets
-- ngx.var.flatnet_upstream, and strips /NAME from the path of the path form.
function _M.route(opts)
    local domain = (opts and opts.domain) or "flatnet.localhost"
    local host = (ngx.var.host or ""):lower()
    local name, path_form
    local suffix = "." .. domain
    if #host > #suffix and host:sub(-#suffix) == suffix then
        name = host:sub(1, #host - #suffix)
    else
        name = ngx.var.uri:match("^/([^/]+)/")
        path_form = true
    end
    if not name then
        return ngx.exit(404)
    end
    local value = dict():get("r:" .. name)
    if not value then
        return ngx.exit(404)
    end
    local target, state = value:match("^(%S+) (%a+)$")
    if state ~= "up" then
        return ngx.exit(502)
    end
    if path_form then
        ngx.req.set_uri(ngx.var.uri:sub(#name + 2))
    end
    ngx.var.flatnet_upstream = target
end

return _M
