// Drives the bridge's /socket.io/ with the real socket.io-client for
// dataplane/tests/socketio_client.rs. One JSON argument:
//   { url, path?, transports?, upgrade?, token?, resume? (default true), joins: [{event, arg?}] }
// Prints one JSON line per thing that happens: open (the Engine.IO connection, with its
// transport), connect, upgrade,
// connect_error, disconnect, every event received (name and arguments), every join's ack.
// It keeps its resume positions exactly as docs/socketio.md tells a front end to, and hands
// them back on every (re)connection through `auth`; it joins again on every `connect`, as the
// seed front ends do. Each line on stdin is a command, {emit, arg?}: emitted with an ack
// callback whose answer is printed. Exits when its stdin closes.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

// The lines a front end adds (docs/socketio.md): remember where each channel is...
const resume = {};
const remember = (answer) => {
  if (answer && typeof answer.channel === "string" && answer.resume) {
    resume[answer.channel] = answer.resume;
  }
};

const socket = io(cfg.url, {
  path: cfg.path ?? "/socket.io/",
  transports: cfg.transports ?? ["polling", "websocket"],
  upgrade: cfg.upgrade ?? true,
  reconnectionDelay: 200,
  reconnectionDelayMax: 1000,
  // ...and hand it back whenever the client library (re)connects.
  auth: (cb) => cb(cfg.resume === false ? { token: cfg.token } : { token: cfg.token, resume }),
});

socket.io.on("open", () => {
  const engine = socket.io.engine;
  out({ t: "open", transport: engine.transport.name });
  engine.on("upgrade", (transport) => out({ t: "upgrade", transport: transport.name }));
});
socket.on("connect", () => {
  out({ t: "connect", transport: socket.io.engine.transport.name });
  for (const [i, join] of (cfg.joins ?? []).entries()) {
    const args = join.arg === undefined ? [] : [join.arg];
    socket.emit(join.event, ...args, (answer) => {
      remember(answer);
      out({ t: "ack", join: i, event: join.event, answer });
    });
  }
});
socket.on("connect_error", (err) => out({ t: "connect_error", message: err.message }));
socket.on("disconnect", (reason) => out({ t: "disconnect", reason }));
socket.onAny((event, ...args) => {
  if (args.length >= 2) {
    remember(args[1]); // a record's meta
  } else {
    remember(args[0]); // a join answered by its alias event
  }
  out({ t: "event", event, args });
});

const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const cmd = JSON.parse(line);
  const args = cmd.arg === undefined ? [] : [cmd.arg];
  socket.emit(cmd.emit, ...args, (answer) => {
    remember(answer);
    out({ t: "ack", event: cmd.emit, answer });
  });
});
commands.on("close", () => {
  socket.close();
  process.exit(0);
});
