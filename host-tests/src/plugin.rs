//! The scenario API: a `Harness` (compiled module), `Plugin`s (one VM with its root context,
//! configured like Envoy configures a plugin) and `Stream`s (one HTTP stream each).

use crate::abi::LogLevel;
use crate::engine::{self, Shared, EPOCH_TICK};
use crate::error::{HostError, Result};
use crate::state::{
    CallResponse, Direction, ForeignCall, Headers, HostCalls, HostState, HttpCall, LocalReply, LogEntry, MemoryWatch,
    Metrics, PropertySet, StreamState, VmState,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::{Instance, Module, Store, Trap, Val, WasmParams, WasmResults};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtxBuilder;

/// What a filter callback answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Headers `Continue` / data `Continue`: the host passes everything held on.
    Continue,
    /// Headers `StopIteration` / data `StopIterationAndBuffer`: the host holds the data back and
    /// the next body callback sees everything buffered so far.
    Pause,
    /// A code the SDK never returns; handled like `Pause` (and reported as a violation).
    Other(u32),
    /// The host did not call the guest: the stream had ended with a local reply or a reset, and
    /// Envoy stops calling the filter then.
    NotCalled,
}

impl Action {
    fn from_code(code: u32) -> Self {
        match code {
            0 => Action::Continue,
            1 => Action::Pause,
            n => Action::Other(n),
        }
    }
}

/// A compiled filter module. Cheap to clone; plugins of one harness share their shared data
/// (like the worker VMs of one vm_id in Envoy).
#[derive(Clone)]
pub struct Harness {
    path: PathBuf,
    module: Module,
    shared: Shared,
}

impl Harness {
    /// The filter from [`engine::default_wasm_path`], compiled once per process.
    pub fn load() -> Result<Self> {
        let (path, module) = engine::default_module()?;
        Ok(Harness { path, module, shared: Shared::default() })
    }

    /// Any proxy-wasm module (compiled anew).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let module = engine::compile(&path)?;
        Ok(Harness { path, module, shared: Shared::default() })
    }

    /// A module given as bytes (compiled anew); `name` only labels errors.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        let module = engine::compile_bytes(name, bytes)?;
        Ok(Harness { path: PathBuf::from(name), module, shared: Shared::default() })
    }

    pub fn wasm_path(&self) -> &Path {
        &self.path
    }

    /// The module's imports as `(module, name)`.
    pub fn imports(&self) -> Vec<(String, String)> {
        self.module.imports().map(|i| (i.module().to_string(), i.name().to_string())).collect()
    }

    /// The module's export names.
    pub fn exports(&self) -> Vec<String> {
        self.module.exports().map(|e| e.name().to_string()).collect()
    }

    pub fn builder(&self) -> PluginBuilder<'_> {
        PluginBuilder {
            harness: self,
            env: Vec::new(),
            vm_config: Vec::new(),
            log_level: LogLevel::Info,
            timeout: timeout_from_env(),
            inherit_stdio: std::env::var_os("LLMGW_HOST_INHERIT_STDIO").is_some(),
            echo_logs: std::env::var_os("LLMGW_HOST_LOG").is_some(),
            properties: Vec::new(),
            reply_callbacks: true,
            memory_limit: None,
        }
    }

    /// A plugin with `config` as its configuration; `Err(Rejected)` when the filter refuses it.
    pub fn plugin(&self, config: impl AsRef<[u8]>) -> Result<Plugin> {
        self.builder().build(config)
    }

    /// A plugin with `config`; check [`Plugin::configured`] for the outcome of `on_configure`.
    pub fn try_plugin(&self, config: impl AsRef<[u8]>) -> Result<Plugin> {
        self.builder().start(config)
    }
}

fn timeout_from_env() -> Duration {
    std::env::var("LLMGW_HOST_CALL_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(30))
}

/// Options of one plugin (VM) before it starts.
pub struct PluginBuilder<'h> {
    harness: &'h Harness,
    env: Vec<(String, String)>,
    vm_config: Vec<u8>,
    log_level: LogLevel,
    timeout: Duration,
    inherit_stdio: bool,
    echo_logs: bool,
    properties: Vec<(Vec<String>, Vec<u8>)>,
    reply_callbacks: bool,
    memory_limit: Option<usize>,
}

impl PluginBuilder<'_> {
    /// Refuse growth of the guest's linear memory past `bytes` (`memory.grow` then fails, and
    /// the guest's allocator usually traps), like a VM with a memory budget. Default: none
    /// (wasm32's 4 GiB).
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Run the filter's own local replies through its response callbacks, as Envoy does
    /// (default true): the reply sent before the response started goes through
    /// `on_response_headers`/`on_response_body` like an upstream response.
    pub fn local_reply_callbacks(mut self, yes: bool) -> Self {
        self.reply_callbacks = yes;
        self
    }

    /// A variable of the VM's environment (Envoy: `vm_config.environment_variables`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.vm_config = bytes.into();
        self
    }

    /// The level `proxy_get_log_level` reports (default `Info`, like Envoy).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// How long one guest call may run before it is interrupted (default 30 s, or
    /// `$LLMGW_HOST_CALL_TIMEOUT_MS`).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Pass the guest's stdout/stderr through instead of capturing them
    /// (also `$LLMGW_HOST_INHERIT_STDIO`).
    pub fn inherit_stdio(mut self, yes: bool) -> Self {
        self.inherit_stdio = yes;
        self
    }

    /// Print every `proxy_log` line to stderr as it happens (also `$LLMGW_HOST_LOG`).
    pub fn echo_logs(mut self, yes: bool) -> Self {
        self.echo_logs = yes;
        self
    }

    /// A property the host answers `proxy_get_property` with, for every context.
    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.properties.push((path.iter().map(|s| s.to_string()).collect(), value.into()));
        self
    }

    /// Instantiates, runs `_initialize`, creates the root context, and calls `on_vm_start` and
    /// `on_configure`; returns the plugin whatever `on_configure` answered.
    pub fn start(self, config: impl AsRef<[u8]>) -> Result<Plugin> {
        let rt = engine::runtime()?;
        let stdout = MemoryOutputPipe::new(4 << 20);
        let stderr = MemoryOutputPipe::new(4 << 20);
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.env);
        if self.inherit_stdio {
            wasi.inherit_stdout().inherit_stderr();
        } else {
            wasi.stdout(stdout.clone()).stderr(stderr.clone());
        }
        let mut vm = VmState::new(self.harness.shared.clone());
        vm.log_level = self.log_level;
        vm.echo_logs = self.echo_logs;
        vm.vm_config = self.vm_config;
        vm.plugin_config = as_json(config.as_ref());
        vm.host_properties.extend(self.properties);
        let memory = MemoryWatch { limit: self.memory_limit, ..MemoryWatch::default() };
        let mut store = Store::new(&rt.engine, HostState { wasi: wasi.build_p1(), vm, memory });
        store.limiter(|s| &mut s.memory);
        let ticks = (self.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let instance = rt
            .linker
            .instantiate(&mut store, &self.harness.module)
            .map_err(|e| HostError::Load(format!("instantiating {}: {e:?}", self.harness.path.display())))?;
        let mut plugin = Plugin {
            store,
            instance,
            stdout,
            stderr,
            timeout_ticks: ticks,
            poisoned: false,
            next_id: 2,
            configured: false,
            reply_callbacks: self.reply_callbacks,
        };
        plugin.start_vm()?;
        Ok(plugin)
    }

    /// Like [`start`](Self::start), but a refused configuration is an `Err(Rejected)`.
    pub fn build(self, config: impl AsRef<[u8]>) -> Result<Plugin> {
        let plugin = self.start(config)?;
        if plugin.configured {
            Ok(plugin)
        } else {
            Err(HostError::Rejected {
                phase: "proxy_on_configure",
                logs: plugin.logs().iter().map(|l| format!("{:?}: {}", l.level, l.message)).collect(),
            })
        }
    }
}

/// One VM: an instance of the module with its root context.
pub struct Plugin {
    store: Store<HostState>,
    instance: Instance,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    timeout_ticks: u64,
    poisoned: bool,
    next_id: u32,
    configured: bool,
    reply_callbacks: bool,
}

impl Plugin {
    fn vm(&self) -> &VmState {
        &self.store.data().vm
    }

    fn vm_mut(&mut self) -> &mut VmState {
        &mut self.store.data_mut().vm
    }

    /// Calls an export with `context` as the active context. A trap poisons the plugin.
    fn call<P: WasmParams, R: WasmResults>(&mut self, export: &str, context: u32, params: P) -> Result<R> {
        if self.poisoned {
            return Err(HostError::Poisoned);
        }
        let func = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, export)
            .map_err(|e| HostError::Load(format!("export {export}: {e:?}")))?;
        self.vm_mut().active_context = context;
        self.store.set_epoch_deadline(self.timeout_ticks);
        let started = Instant::now();
        let result = func.call(&mut self.store, params);
        let calls = &mut self.vm_mut().host_calls;
        calls.guest_calls += 1;
        calls.guest_time += started.elapsed();
        let root = self.vm().root_id;
        self.vm_mut().active_context = root;
        result.map_err(|e| self.trap(export, e))
    }

    fn trap(&mut self, export: &str, e: wasmtime::Error) -> HostError {
        self.poisoned = true;
        let timeout = matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt));
        HostError::Trap {
            export: export.to_string(),
            timeout,
            message: format!("{e:?}"),
            stderr: tail(&self.stderr(), 4096),
        }
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    fn start_vm(&mut self) -> Result<()> {
        // A reactor (what the SDK builds) has `_initialize`; a command has `_start`.
        if self.has_export("_initialize") {
            self.call::<(), ()>("_initialize", 0, ())?;
        } else if let Ok(start) = self.instance.get_typed_func::<(), ()>(&mut self.store, "_start") {
            self.store.set_epoch_deadline(self.timeout_ticks);
            if let Err(e) = start.call(&mut self.store, ()) {
                // A command that returns from main calls `proc_exit(0)`: that is success.
                if !matches!(e.downcast_ref::<wasmtime_wasi::I32Exit>(), Some(wasmtime_wasi::I32Exit(0))) {
                    return Err(self.trap("_start", e));
                }
            }
        }
        let root = self.vm().root_id;
        self.call::<(u32, u32), ()>("proxy_on_context_create", root, (root, 0))?;
        let vm_config_len = self.vm().vm_config.len() as u32;
        if self.call::<(u32, u32), u32>("proxy_on_vm_start", root, (root, vm_config_len))? == 0 {
            return Err(HostError::Rejected {
                phase: "proxy_on_vm_start",
                logs: self.logs().iter().map(|l| l.message.clone()).collect(),
            });
        }
        let config_len = self.vm().plugin_config.len() as u32;
        self.configured = self.call::<(u32, u32), u32>("proxy_on_configure", root, (root, config_len))? != 0;
        Ok(())
    }

    /// The size of the guest's linear memory in bytes (pages × 64 KiB). Linear memory never
    /// shrinks, so this is also the peak since the VM started: the size after a request minus
    /// the size before it is the growth that request caused (on a VM whose earlier requests did
    /// not leave free memory behind: use a fresh plugin to measure one request).
    pub fn memory_bytes(&mut self) -> u64 {
        match self.instance.get_memory(&mut self.store, "memory") {
            Some(m) => m.data_size(&self.store) as u64,
            None => 0,
        }
    }

    /// The largest linear memory size the guest asked for, granted or refused by the
    /// [memory limit](PluginBuilder::memory_limit).
    pub fn largest_memory_request(&self) -> u64 {
        self.store.data().memory.largest_request as u64
    }

    /// How many `memory.grow` requests the memory limit refused.
    pub fn memory_growth_refused(&self) -> u64 {
        self.store.data().memory.refused
    }

    /// Host calls the guest made, bytes copied each way, and guest calls (since the start, or
    /// since [`reset_host_calls`](Self::reset_host_calls)).
    pub fn host_calls(&self) -> &HostCalls {
        &self.vm().host_calls
    }

    pub fn reset_host_calls(&mut self) {
        self.vm_mut().host_calls = HostCalls::default();
    }

    /// Whether `proxy_on_configure` accepted the configuration.
    pub fn configured(&self) -> bool {
        self.configured
    }

    pub fn root_id(&self) -> u32 {
        self.vm().root_id
    }

    /// A new HTTP stream (its context is created on its first callback).
    pub fn stream(&mut self) -> Stream<'_> {
        let id = self.next_id;
        self.next_id += 1;
        self.vm_mut().streams.insert(id, StreamState::default());
        Stream { plugin: self, id }
    }

    /// A handle to a stream opened earlier, to interleave streams.
    pub fn resume(&mut self, id: u32) -> Option<Stream<'_>> {
        if self.vm().streams.contains_key(&id) {
            Some(Stream { plugin: self, id })
        } else {
            None
        }
    }

    /// Every `proxy_log` line, in order.
    pub fn logs(&self) -> &[LogEntry] {
        &self.vm().logs
    }

    /// Every `proxy_set_property` call, in order.
    pub fn properties(&self) -> &[PropertySet] {
        &self.vm().property_sets
    }

    pub fn metrics(&self) -> &Metrics {
        &self.vm().metrics
    }

    pub fn foreign_calls(&self) -> &[ForeignCall] {
        &self.vm().foreign_calls
    }

    pub fn http_calls(&self) -> &[HttpCall] {
        &self.vm().http_calls
    }

    /// Things the guest did that Envoy would refuse or ignore (header edits after forwarding,
    /// invalid header values, unsupported buffer edits, a second local reply, ...).
    pub fn violations(&self) -> &[String] {
        &self.vm().violations
    }

    /// Moves the clock `proxy_get_current_time_nanoseconds` reads.
    pub fn advance_clock(&mut self, ms: u64) {
        self.vm_mut().clock_ns += ms * 1_000_000;
    }

    pub fn now_ns(&self) -> u64 {
        self.vm().clock_ns
    }

    pub fn set_log_level(&mut self, level: LogLevel) {
        self.vm_mut().log_level = level;
    }

    pub fn tick_period_ms(&self) -> u32 {
        self.vm().tick_period_ms
    }

    /// Fires `proxy_on_tick` on the root context.
    pub fn tick(&mut self) -> Result<()> {
        let root = self.root_id();
        self.call::<u32, ()>("proxy_on_tick", root, root)?;
        self.settle();
        Ok(())
    }

    /// Makes later `proxy_http_call`s fail with this ABI status (0 = succeed with a token).
    pub fn set_http_call_status(&mut self, status: u32) {
        self.vm_mut().http_call_status = status;
    }

    /// Delivers the response of the http call `token` to the context that made it.
    pub fn http_call_response(&mut self, token: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<()> {
        let context = self
            .http_calls()
            .iter()
            .find(|c| c.token == token)
            .map(|c| c.context_id)
            .ok_or_else(|| HostError::Usage(format!("no http call with token {token}")))?;
        let response =
            CallResponse { headers: Headers::from_pairs(headers), body: body.to_vec(), trailers: Headers::new() };
        self.vm_mut().call_response = Some(response);
        let args = (context, token, headers.len() as u32, body.len() as u32, 0u32);
        let r = self.call::<(u32, u32, u32, u32, u32), ()>("proxy_on_http_call_response", context, args);
        self.vm_mut().call_response = None;
        r?;
        self.settle();
        Ok(())
    }

    /// Calls any export with `i32` arguments and results, with the root context active: for
    /// ABI-level tests.
    pub fn call_raw(&mut self, export: &str, args: &[u32]) -> Result<Vec<u32>> {
        if self.poisoned {
            return Err(HostError::Poisoned);
        }
        let func = self
            .instance
            .get_func(&mut self.store, export)
            .ok_or_else(|| HostError::Usage(format!("no export {export}")))?;
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a as i32)).collect();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        self.store.set_epoch_deadline(self.timeout_ticks);
        if let Err(e) = func.call(&mut self.store, &params, &mut results) {
            return Err(self.trap(export, e));
        }
        self.settle();
        Ok(results.iter().map(|v| v.i32().unwrap_or(0) as u32).collect())
    }

    /// What the guest wrote to stdout (empty when stdio is inherited).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.contents()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }

    /// Applies `proxy_continue_stream` requests once the VM call that made them has returned,
    /// as Envoy does.
    fn settle(&mut self) {
        for s in self.vm_mut().streams.values_mut() {
            let finished = s.finished();
            for dir in [&mut s.request, &mut s.response] {
                if std::mem::take(&mut dir.continue_requested) && !finished && dir.headers_seen {
                    dir.forward();
                }
            }
        }
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// One HTTP stream through the filter.
pub struct Stream<'p> {
    plugin: &'p mut Plugin,
    id: u32,
}

impl Stream<'_> {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn plugin(&mut self) -> &mut Plugin {
        self.plugin
    }

    fn state(&self) -> &StreamState {
        // Streams are never removed, and a `Stream` only exists for an inserted id.
        &self.plugin.vm().streams[&self.id]
    }

    fn state_mut(&mut self) -> &mut StreamState {
        let id = self.id;
        self.plugin.vm_mut().streams.get_mut(&id).expect("stream state exists for a live handle")
    }

    fn dir_mut(&mut self, side: Side) -> &mut Direction {
        let s = self.state_mut();
        match side {
            Side::Request => &mut s.request,
            Side::Response => &mut s.response,
        }
    }

    fn ensure_context(&mut self) -> Result<()> {
        if self.state().done {
            return Err(HostError::Usage(format!("stream {} is already done", self.id)));
        }
        if !self.state().created {
            let (id, root) = (self.id, self.plugin.root_id());
            self.plugin.call::<(u32, u32), ()>("proxy_on_context_create", id, (id, root))?;
            self.state_mut().created = true;
        }
        Ok(())
    }

    /// Records the outcome of a request/response callback: Continue passes everything held on,
    /// a local reply or reset stops the stream (and the reply runs through the response
    /// callbacks, as in Envoy).
    fn after(&mut self, side: Side, code: u32) -> Result<Action> {
        let action = Action::from_code(code);
        if let Action::Other(n) = action {
            self.plugin.vm_mut().violations.push(format!("context {}: callback returned {n}", self.id));
        }
        if !self.state().finished() && action == Action::Continue {
            self.dir_mut(side).forward();
        }
        self.plugin.settle();
        let s = self.state();
        if !s.local_replies.is_empty() && !s.reply_delivered && !s.response.headers_seen && self.plugin.reply_callbacks
        {
            self.deliver_local_reply()?;
        }
        Ok(action)
    }

    /// Envoy sends a local reply, started before any response, through the encoder filters:
    /// headers as Envoy builds them (`:status`, the filter's headers, content-length and a
    /// default content-type for a body), then the body. What the callbacks leave is what the
    /// client gets (`forwarded_response_*`).
    fn deliver_local_reply(&mut self) -> Result<()> {
        self.state_mut().reply_delivered = true;
        let Some(reply) = self.local_reply().cloned() else { return Ok(()) };
        let mut headers = Headers::new();
        headers.add(":status", &reply.status.to_string());
        for (k, v) in reply.headers.iter() {
            headers.add(k, v);
        }
        if !reply.body.is_empty() {
            if !headers.contains("content-length") {
                headers.add("content-length", &reply.body.len().to_string());
            }
            if !headers.contains("content-type") {
                headers.add("content-type", "text/plain");
            }
        }
        let end = reply.body.is_empty();
        let count = headers.len() as u32;
        let dir = self.dir_mut(Side::Response);
        dir.headers = headers;
        dir.headers_seen = true;
        dir.end_seen = end;
        let id = self.id;
        let code =
            self.plugin.call::<(u32, u32, u32), u32>("proxy_on_response_headers", id, (id, count, end as u32))?;
        if code == 0 {
            self.dir_mut(Side::Response).forward();
        }
        if !end {
            let dir = self.dir_mut(Side::Response);
            dir.buffered = reply.body.clone();
            dir.end_seen = true;
            let size = reply.body.len() as u32;
            let code = self.plugin.call::<(u32, u32, u32), u32>("proxy_on_response_body", id, (id, size, 1))?;
            if code == 0 {
                self.dir_mut(Side::Response).forward();
            }
        }
        self.plugin.settle();
        Ok(())
    }

    fn headers(&mut self, side: Side, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        if self.state().finished() {
            return Ok(Action::NotCalled);
        }
        let dir = self.dir_mut(side);
        if dir.headers_seen {
            return Err(HostError::Usage(format!("{} headers sent twice", side.name())));
        }
        dir.headers = Headers::from_pairs(headers);
        dir.headers_seen = true;
        dir.end_seen = end_of_stream;
        self.ensure_context()?;
        let export = match side {
            Side::Request => "proxy_on_request_headers",
            Side::Response => "proxy_on_response_headers",
        };
        let args = (self.id, headers.len() as u32, end_of_stream as u32);
        let code = self.plugin.call::<(u32, u32, u32), u32>(export, self.id, args)?;
        self.after(side, code)
    }

    fn body(&mut self, side: Side, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        if self.state().finished() {
            return Ok(Action::NotCalled);
        }
        let dir = self.dir_mut(side);
        if !dir.headers_seen || dir.end_seen {
            return Err(HostError::Usage(format!("{} body outside of headers..end of stream", side.name())));
        }
        dir.buffered.extend_from_slice(chunk);
        dir.end_seen = end_of_stream;
        let size = dir.buffered.len() as u32;
        self.ensure_context()?;
        let export = match side {
            Side::Request => "proxy_on_request_body",
            Side::Response => "proxy_on_response_body",
        };
        let code = self.plugin.call::<(u32, u32, u32), u32>(export, self.id, (self.id, size, end_of_stream as u32))?;
        self.after(side, code)
    }

    fn trailers(&mut self, side: Side, trailers: &[(&str, &str)]) -> Result<Action> {
        if self.state().finished() {
            return Ok(Action::NotCalled);
        }
        let dir = self.dir_mut(side);
        if !dir.headers_seen || dir.end_seen {
            return Err(HostError::Usage(format!("{} trailers outside of the stream", side.name())));
        }
        dir.trailers = Headers::from_pairs(trailers);
        dir.trailers_seen = true;
        dir.end_seen = true;
        self.ensure_context()?;
        let export = match side {
            Side::Request => "proxy_on_request_trailers",
            Side::Response => "proxy_on_response_trailers",
        };
        let code = self.plugin.call::<(u32, u32), u32>(export, self.id, (self.id, trailers.len() as u32))?;
        let action = self.after(side, code)?;
        let dir = self.dir_mut(side);
        if dir.end_forwarded && dir.forwarded_trailers.is_none() {
            dir.forwarded_trailers = Some(dir.trailers.clone());
        }
        Ok(action)
    }

    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        self.headers(Side::Request, headers, end_of_stream)
    }

    /// One chunk of request body. While the filter pauses, chunks accumulate and each call
    /// hands the guest the whole buffer (`body_size` = everything buffered).
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(Side::Request, chunk, end_of_stream)
    }

    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(Side::Request, trailers)
    }

    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        self.headers(Side::Response, headers, end_of_stream)
    }

    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(Side::Response, chunk, end_of_stream)
    }

    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(Side::Response, trailers)
    }

    /// Headers, then the body in one chunk (headers alone end the stream when `body` is empty).
    pub fn send_request(&mut self, headers: &[(&str, &str)], body: &[u8]) -> Result<()> {
        self.request_headers(headers, body.is_empty())?;
        if !body.is_empty() {
            self.request_body(body, true)?;
        }
        Ok(())
    }

    /// Response headers, then each chunk, the last one ending the stream.
    pub fn send_response(&mut self, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Result<()> {
        self.response_headers(headers, chunks.is_empty())?;
        for (i, chunk) in chunks.iter().enumerate() {
            self.response_body(chunk, i + 1 == chunks.len())?;
        }
        Ok(())
    }

    /// `proxy_on_log` (Envoy calls it at the end of every stream, local replies included).
    pub fn log(&mut self) -> Result<()> {
        self.ensure_context()?;
        self.plugin.call::<u32, ()>("proxy_on_log", self.id, self.id)?;
        self.plugin.settle();
        Ok(())
    }

    /// `proxy_on_done` then `proxy_on_delete`; returns what `on_done` answered.
    pub fn done(&mut self) -> Result<bool> {
        self.ensure_context()?;
        let done = self.plugin.call::<u32, u32>("proxy_on_done", self.id, self.id)? != 0;
        self.plugin.call::<u32, ()>("proxy_on_delete", self.id, self.id)?;
        self.state_mut().done = true;
        Ok(done)
    }

    /// The end of a stream as Envoy runs it: `on_log`, `on_done`, `on_delete`.
    pub fn finish(&mut self) -> Result<()> {
        self.log()?;
        self.done()?;
        Ok(())
    }

    /// The request headers as the filter passed them upstream (`None` until it continued).
    pub fn forwarded_request_headers(&self) -> Option<&Headers> {
        self.state().request.forwarded_headers.as_ref()
    }

    /// Every request body byte passed upstream so far.
    pub fn forwarded_request_body(&self) -> &[u8] {
        &self.state().request.forwarded_body
    }

    /// The request ended upstream (end of stream passed on).
    pub fn request_complete(&self) -> bool {
        self.state().request.end_forwarded
    }

    pub fn forwarded_response_headers(&self) -> Option<&Headers> {
        self.state().response.forwarded_headers.as_ref()
    }

    /// Every response body byte passed downstream so far.
    pub fn forwarded_response_body(&self) -> &[u8] {
        &self.state().response.forwarded_body
    }

    /// Response body as passed downstream, chunk by chunk.
    pub fn forwarded_response_chunks(&self) -> &[Vec<u8>] {
        &self.state().response.forwarded_chunks
    }

    pub fn response_complete(&self) -> bool {
        self.state().response.end_forwarded
    }

    /// The request headers as they are now (including edits not forwarded).
    pub fn current_request_headers(&self) -> &Headers {
        &self.state().request.headers
    }

    pub fn current_response_headers(&self) -> &Headers {
        &self.state().response.headers
    }

    /// The first local reply the filter sent on this stream.
    pub fn local_reply(&self) -> Option<&LocalReply> {
        self.state().local_replies.first()
    }

    pub fn closed(&self) -> bool {
        self.state().closed
    }

    /// Filter state the guest set on this stream (`proxy_set_property`).
    pub fn property(&self, path: &[&str]) -> Option<&[u8]> {
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.state().properties.get(&key).map(Vec::as_slice)
    }

    pub fn property_str(&self, path: &[&str]) -> Option<&str> {
        self.property(path).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// A property the host answers `proxy_get_property` with for this stream only.
    pub fn set_host_property(&mut self, path: &[&str], value: impl Into<Vec<u8>>) {
        let key = path.iter().map(|s| s.to_string()).collect();
        self.state_mut().host_properties.insert(key, value.into());
    }
}

/// The filter takes JSON configuration (llmgw converts YAML); scenario tests write YAML for
/// brevity, so YAML is converted here the same way. Text that is neither stays as it is.
fn as_json(config: &[u8]) -> Vec<u8> {
    let first = config.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') || config.is_empty() {
        return config.to_vec();
    }
    match serde_yaml_ng::from_slice::<serde_json::Value>(config) {
        Ok(value @ serde_json::Value::Object(_)) => serde_json::to_vec(&value).unwrap_or_else(|_| config.to_vec()),
        _ => config.to_vec(),
    }
}
