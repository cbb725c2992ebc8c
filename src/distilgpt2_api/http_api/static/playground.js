/* The playground: a page for trying the model by hand, streaming from this service's OpenAI-compatible
   routes with fetch. Plain JavaScript, no build step, no framework; everything it loads is same-origin. */
"use strict";

// --- Server-Sent Events ------------------------------------------------------------------------------

/* Parses an event stream as the HTML standard does, from text in pieces of any size: lines end with
   CRLF, LF or CR (a CRLF may be split between two pieces); a blank line dispatches the event; lines
   starting with ":" are comments (the server's keep-alive pings). Calls onEvent({event, data}). */
class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.pending = ""; // an unfinished line
    this.afterCr = false; // the last piece ended with CR: an LF starting the next one belongs to it
    this.data = [];
    this.event = "";
  }

  push(text) {
    let start = 0;
    if (this.afterCr && text.startsWith("\n")) start = 1;
    this.afterCr = false;
    const buffer = this.pending + text.slice(start);
    let lineStart = 0;
    for (let i = 0; i < buffer.length; i++) {
      const c = buffer[i];
      if (c !== "\r" && c !== "\n") continue;
      this.line(buffer.slice(lineStart, i));
      if (c === "\r") {
        if (i + 1 < buffer.length) {
          if (buffer[i + 1] === "\n") i++;
        } else {
          this.afterCr = true;
        }
      }
      lineStart = i + 1;
    }
    this.pending = buffer.slice(lineStart);
  }

  line(line) {
    if (line === "") {
      if (this.data.length > 0) this.onEvent({ event: this.event || "message", data: this.data.join("\n") });
      this.data = [];
      this.event = "";
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
  }
}

/* Reads a response body of Server-Sent Events; onData(data, readIndex) for each event. UTF-8 characters
   split between network chunks are joined by the streaming decoder. */
async function readEventStream(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let reads = 0;
  const parser = new SseParser((event) => onData(event.data, reads));
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    reads++;
    parser.push(decoder.decode(value, { stream: true }));
  }
  parser.push(decoder.decode());
}

/* The API's own words for a failed request: {"error": {"message", "code"}, "request_id"}, or what a
   gateway in front of it says ({"message": ...}), or the status line and the start of the body. */
async function errorOf(response) {
  const text = await response.text().catch(() => "");
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  const found = { status: response.status, message: "", code: null, requestId: null };
  if (body && body.error && typeof body.error.message === "string") {
    return { ...found, message: body.error.message, code: body.error.code || null, requestId: body.request_id || null };
  }
  if (body && typeof body.message === "string") return { ...found, message: body.message };
  const snippet = text.trim().slice(0, 300);
  const statusLine = `HTTP ${response.status}${response.statusText ? " " + response.statusText : ""}`;
  return { ...found, message: snippet ? `${statusLine}: ${snippet}` : statusLine };
}

// --- the page --------------------------------------------------------------------------------------

const config = JSON.parse(document.body.dataset.config || "{}");
const $ = (id) => document.getElementById(id);
const ui = {
  modes: $("modes"),
  chatRadio: $("mode-chat"),
  chatNote: $("chat-note"),
  transcript: $("transcript"),
  completionOutput: $("completion-output"),
  chatLog: $("chat-log"),
  status: $("status"),
  stats: $("stats"),
  error: $("error"),
  composer: $("composer"),
  promptLabel: $("prompt-label"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  keyField: $("key-field"),
  apiKey: $("api-key"),
  maxTokens: $("max-tokens"),
  temperature: $("temperature"),
  topP: $("top-p"),
  n: $("n"),
  seed: $("seed"),
  stopSequences: $("stop-sequences"),
  systemField: $("system-field"),
  system: $("system"),
  jsonMode: $("json-mode"),
  schemaField: $("schema-field"),
  jsonSchema: $("json-schema"),
};

const DEFAULT_MAX_TOKENS = 64;
// What the schema box starts with (indented by 2, as answers are shown): short enough for the default max new
// tokens, and to read at a glance.
const EXAMPLE_SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 20 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    hobbies: { type: "array", items: { type: "string", maxLength: 20 }, maxItems: 3 },
  },
  required: ["name", "age", "hobbies"],
  additionalProperties: false,
};
const history = []; // the chat so far: {role, content}
let mode = "completion";
let run = null; // the generation under way

function setup() {
  ui.maxTokens.max = String(config.maxTokens);
  ui.maxTokens.value = String(Math.min(DEFAULT_MAX_TOKENS, config.maxTokens || DEFAULT_MAX_TOKENS));
  $("max-tokens-limit").textContent = String(config.maxTokens);
  ui.n.max = String(config.maxChoices);
  $("n-limit").textContent = String(config.maxChoices);
  if (config.maxPromptChars) ui.prompt.maxLength = config.maxPromptChars;
  ui.keyField.hidden = !config.keyRequired;
  if (!config.chat) {
    ui.chatRadio.disabled = true;
    ui.chatNote.hidden = false;
  }
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.prompt.addEventListener("keydown", onPromptKey);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && run) stop();
  });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", newChat);
  ui.jsonSchema.value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
  ui.jsonMode.addEventListener("change", () => {
    ui.schemaField.hidden = !ui.jsonMode.checked;
  });
  setMode(config.chat ? "chat" : "completion");
  document.documentElement.classList.add("ready");
  ui.prompt.focus();
}

function onPromptKey(event) {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.altKey) return;
  event.preventDefault(); // Enter sends; Shift+Enter (the default) starts a new line
  send();
}

function setMode(next) {
  mode = next;
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.checked = radio.value === next;
  const chat = next === "chat";
  ui.completionOutput.hidden = chat;
  ui.chatLog.hidden = !chat;
  ui.newChat.hidden = !chat;
  ui.systemField.hidden = !chat;
  ui.n.disabled = chat; // a chat keeps one answer per turn
  $("n-hint").textContent = chat ? "Chat keeps one answer" : `Up to ${config.maxChoices}`;
  ui.promptLabel.textContent = chat ? "Message" : "Prompt";
  ui.prompt.placeholder = chat ? "Ask something" : "Once upon a time";
  document.body.dataset.mode = next;
}

function newChat() {
  if (run) return;
  history.length = 0;
  ui.chatLog.replaceChildren(placeholder("li", "Your conversation appears here. The whole history goes with every message."));
  clearError();
  ui.stats.hidden = true;
  setStatus("New chat.");
  ui.prompt.focus();
}

function placeholder(tag, text) {
  const element = document.createElement(tag);
  element.className = "placeholder";
  element.textContent = text;
  return element;
}

// --- building the request --------------------------------------------------------------------------

class InputError extends Error {}

/* A number field's value: undefined when empty, an error when the browser holds something that is no number. */
function numberOf(input, name) {
  if (input.validity.badInput) throw new InputError(`${name}: not a number`);
  const text = input.value.trim();
  return text === "" ? undefined : Number(text);
}

function stopSequences() {
  const unescape = (line) =>
    line.replace(/\\(n|t|r|\\)/g, (_, c) => ({ n: "\n", t: "\t", r: "\r", "\\": "\\" })[c]);
  return ui.stopSequences.value
    .split("\n")
    .filter((line) => line !== "")
    .map(unescape);
}

/* `response_format` for JSON output: the schema box's JSON Schema, or any JSON object when it is empty;
   undefined for plain text. A schema that is not a JSON object is the page's to report, before sending. */
function responseFormat() {
  if (!ui.jsonMode.checked) return undefined;
  const text = ui.jsonSchema.value.trim();
  if (text === "") return { type: "json_object" };
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (error) {
    throw new InputError(`JSON Schema: not valid JSON (${error.message})`);
  }
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
    throw new InputError("JSON Schema: must be a JSON object, such as {\"type\": \"object\"}");
  }
  const title = typeof schema.title === "string" ? schema.title.replace(/[^a-zA-Z0-9_-]+/g, "_").slice(0, 64) : "";
  return { type: "json_schema", json_schema: { name: title.replace(/^_+|_+$/g, "") || "answer", schema } };
}

/* The JSON body. The seed goes as the digits typed: seeds reach 2^63 - 1, past JavaScript's exact integers. */
function requestBody(parameters) {
  const seed = ui.seed.value.trim();
  const body = { ...parameters };
  const maxTokens = numberOf(ui.maxTokens, "Max new tokens");
  if (maxTokens !== undefined) body.max_tokens = maxTokens;
  const temperature = numberOf(ui.temperature, "Temperature");
  if (temperature !== undefined) body.temperature = temperature;
  const topP = numberOf(ui.topP, "Top p");
  if (topP !== undefined) body.top_p = topP;
  if (mode === "completion") {
    const n = numberOf(ui.n, "Choices");
    if (n !== undefined) body.n = n;
  }
  const stops = stopSequences();
  if (stops.length === 1) body.stop = stops[0];
  else if (stops.length > 1) body.stop = stops;
  const format = responseFormat();
  if (format) body.response_format = format;
  body.stream = true;
  body.stream_options = { include_usage: true };
  let json = JSON.stringify(body);
  if (ui.seed.validity.badInput) throw new InputError("Seed: not a number");
  if (/^\d+$/.test(seed)) json = json.slice(0, -1) + `,"seed":${BigInt(seed).toString()}}`;
  else if (seed !== "") json = json.slice(0, -1) + `,"seed":${JSON.stringify(Number(seed))}}`;
  return json;
}

function headers() {
  const result = { "content-type": "application/json", accept: "text/event-stream" };
  const key = ui.apiKey.value.trim();
  if (key) result.authorization = `Bearer ${key}`;
  return result;
}

// --- one generation --------------------------------------------------------------------------------

function send() {
  if (run) return;
  clearError();
  const text = ui.prompt.value;
  if (text.trim() === "") {
    setStatus(mode === "chat" ? "Write a message first." : "Write a prompt first.");
    ui.prompt.focus();
    return;
  }
  let body;
  let outputs;
  let userItem = null;
  try {
    if (mode === "chat") {
      const messages = [];
      if (ui.system.value.trim() !== "") messages.push({ role: "system", content: ui.system.value });
      messages.push(...history, { role: "user", content: text });
      body = requestBody({ messages });
      history.push({ role: "user", content: text });
      ui.chatLog.querySelector(".placeholder")?.remove();
      userItem = chatMessage("user", text);
      const answer = chatMessage("assistant", "");
      outputs = [answer.querySelector(".generated")];
      ui.prompt.value = "";
    } else {
      body = requestBody({ prompt: text });
      outputs = completionOutputs(text, numberOf(ui.n, "Choices") || 1);
    }
  } catch (error) {
    if (!(error instanceof InputError)) throw error;
    showError({ message: error.message });
    return;
  }
  const json = ui.jsonMode.checked;
  if (json) for (const output of outputs) output.closest(".choice, .message").classList.add("json");
  const url = `${config.root}/v1/${mode === "chat" ? "chat/completions" : "completions"}`;
  generate(url, body, outputs, userItem, json);
}

function chatMessage(role, text) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  const who = document.createElement("span");
  who.className = "role";
  who.textContent = role === "user" ? "You" : config.model;
  const content = document.createElement("div");
  content.className = role === "user" ? "content" : "content generated";
  content.textContent = text;
  item.append(who, content);
  ui.chatLog.append(item);
  scrollToEnd(true);
  return item;
}

/* One output per choice: the prompt, dimmed, and the text generated after it. */
function completionOutputs(prompt, count) {
  const outputs = [];
  const blocks = [];
  for (let i = 0; i < Math.max(1, Math.min(count, 64)); i++) {
    const block = document.createElement("article");
    block.className = "choice";
    if (count > 1) {
      const title = document.createElement("h3");
      title.textContent = `Choice ${i + 1}`;
      block.append(title);
    }
    const text = document.createElement("p");
    text.className = "text";
    const echo = document.createElement("span");
    echo.className = "prompt-echo";
    echo.textContent = prompt;
    const generated = document.createElement("span");
    generated.className = "generated";
    text.append(echo, generated);
    block.append(text);
    blocks.push(block);
    outputs.push(generated);
  }
  ui.completionOutput.replaceChildren(...blocks);
  return outputs;
}

async function generate(url, body, outputs, userItem, json) {
  const controller = new AbortController();
  const current = {
    controller,
    mode,
    json,
    outputs,
    userItem,
    texts: outputs.map(() => ""),
    finish: outputs.map(() => null),
    timeLimit: outputs.map(() => false),
    usage: null,
    started: performance.now(),
    firstAt: null,
    lastAt: null,
    firstRead: null,
    lastRead: null,
    responded: false,
    done: false,
    stopped: false,
    error: null,
  };
  run = current;
  setBusy(true);
  setStatus("Generating…");
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body, signal: controller.signal });
    current.responded = true;
    if (!response.ok) {
      current.error = await errorOf(response);
    } else if ((response.headers.get("content-type") || "").includes("text/event-stream")) {
      await readEventStream(response, (data, read) => onEvent(current, data, read));
      if (!current.done && !current.error) {
        current.error = { message: "The connection closed before the answer was complete." };
      }
    } else {
      onWholeResponse(current, await response.json());
    }
  } catch (error) {
    const reason = error && error.message ? error.message : String(error);
    if (error && error.name === "AbortError") current.stopped = true;
    else if (current.responded) current.error = { message: `The connection broke off: ${reason}` };
    else current.error = { message: `Could not reach the service: ${reason}` };
  }
  finish(current);
}

function onEvent(current, data, read) {
  if (data === "[DONE]") {
    current.done = true;
    return;
  }
  let chunk;
  try {
    chunk = JSON.parse(data);
  } catch {
    current.error = { message: `The service sent an event that is not JSON: ${data.slice(0, 200)}` };
    return;
  }
  if (chunk.error) {
    // The stream had begun (its status was 200) when something failed: the API says what in an event.
    current.error = {
      message: chunk.error.message || "the generation failed",
      code: chunk.error.code || null,
      requestId: chunk.request_id || null,
    };
    return;
  }
  if (chunk.usage) current.usage = chunk.usage;
  for (const choice of chunk.choices || []) {
    const i = choice.index || 0;
    if (i >= current.outputs.length) continue;
    const text = current.mode === "chat" ? (choice.delta && choice.delta.content) || "" : choice.text || "";
    if (text) {
      const stick = nearEnd();
      current.texts[i] += text;
      current.outputs[i].append(text);
      if (current.firstAt === null) {
        current.firstAt = performance.now();
        current.firstRead = read;
        setStatus("Generating…");
      }
      scrollToEnd(stick);
    }
    if (choice.finish_reason) current.finish[i] = choice.finish_reason;
    if (choice.time_limit_reached) current.timeLimit[i] = true;
    if (text || choice.finish_reason) {
      current.lastAt = performance.now();
      current.lastRead = read;
    }
  }
}

/* A server (or a proxy) that answered with one JSON response instead of events. */
function onWholeResponse(current, body) {
  current.usage = body.usage || null;
  for (const choice of body.choices || []) {
    const i = choice.index || 0;
    if (i >= current.outputs.length) continue;
    const text = current.mode === "chat" ? (choice.message && choice.message.content) || "" : choice.text || "";
    current.texts[i] = text;
    current.outputs[i].textContent = text;
    current.finish[i] = choice.finish_reason || null;
    current.timeLimit[i] = Boolean(choice.time_limit_reached);
  }
  current.firstAt = current.lastAt = performance.now();
  current.firstRead = current.lastRead = 1;
  current.done = true;
}

function stop() {
  if (!run) return;
  run.controller.abort(); // the server sees the client leave and frees the model within a token
  ui.prompt.focus();
}

function finish(current) {
  const ended = performance.now();
  run = null;
  setBusy(false);
  const received = current.texts.some((text) => text !== "");
  if (current.mode === "chat") {
    if (current.done || received) {
      history.push({ role: "assistant", content: current.texts[0] });
      const item = current.outputs[0].parentElement;
      if (!current.done) item.classList.add("cut");
      else if (!received) item.classList.add("empty");
    } else {
      // Nothing came back: take the message back, so the conversation stays as it was.
      history.pop();
      current.userItem.nextElementSibling?.remove();
      current.userItem.remove();
      if (ui.prompt.value === "") ui.prompt.value = current.userItem.querySelector(".content").textContent;
      if (ui.chatLog.children.length === 0) {
        ui.chatLog.append(placeholder("li", "Your conversation appears here. The whole history goes with every message."));
      }
    }
  } else if (!received && !current.done) {
    ui.completionOutput.replaceChildren(placeholder("p", "Nothing was generated."));
  }
  if (current.json) showJson(current);
  const seconds = (ended - current.started) / 1000;
  if (current.error) {
    showError(current.error);
    setStatus(received ? `Failed after ${formatSeconds(seconds)}; the text so far stays.` : "Failed.");
  } else if (current.stopped) {
    setStatus(`Stopped after ${formatSeconds(seconds)}.`);
  } else {
    setStatus("Done.");
  }
  if (current.error && !received) ui.stats.hidden = true;
  else showStats(current, ended);
}

/* JSON output, once the answers are in: the raw text streamed in; an answer that stopped is shown again
   pretty-printed, and one that was cut (or stopped by hand) is said to be incomplete and stays as it came. */
function showJson(current) {
  current.outputs.forEach((output, i) => {
    const text = current.texts[i];
    const reason = current.finish[i];
    if (reason === "stop") {
      try {
        output.textContent = JSON.stringify(JSON.parse(text), null, 2);
        output.classList.add("pretty");
      } catch {
        jsonNote(output, "Not JSON, though the answer ended: shown as generated.");
      }
    } else if (reason === "length") {
      jsonNote(
        output,
        current.timeLimit[i]
          ? "Incomplete JSON: the time limit cut it (finish_reason length). Shown as generated."
          : "Incomplete JSON: cut at max new tokens (finish_reason length). Shown as generated; allow more tokens to finish it.",
      );
    } else if (text !== "") {
      jsonNote(output, `Incomplete JSON: ${current.stopped ? "stopped" : "the answer did not finish"}. Shown as generated.`);
    }
  });
}

function jsonNote(output, text) {
  const note = document.createElement("p");
  note.className = "json-note";
  note.textContent = text;
  output.closest(".choice, .message").append(note);
}

function showStats(current, ended) {
  const reasons = current.finish.map((reason, i) => {
    if (reason === null) return current.stopped ? "stopped" : "–";
    return current.timeLimit[i] ? `${reason} (time limit)` : reason;
  });
  const unique = [...new Set(reasons)];
  $("stat-finish").textContent = unique.length === 1 ? unique[0] : reasons.map((r, i) => `${i + 1}: ${r}`).join(", ");
  const usage = current.usage;
  $("stat-tokens").textContent = usage
    ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} generated`
    : current.stopped
      ? "not counted (stopped)"
      : "–";
  $("stat-ttft").textContent = current.firstAt === null ? "–" : formatMs(current.firstAt - current.started);
  $("stat-total").textContent = formatSeconds((ended - current.started) / 1000);
  let speed = "–";
  if (usage && usage.completion_tokens > 0 && current.firstAt !== null) {
    const span = (current.lastAt - current.firstAt) / 1000;
    const choices = current.outputs.length;
    if (current.firstRead !== current.lastRead && span > 0 && usage.completion_tokens > choices) {
      // After the first token of each choice, the rest took `span`.
      speed = `${((usage.completion_tokens - choices) / span).toFixed(1)} tokens/s`;
    } else {
      // Everything arrived at once (a buffered response, as under Lambda): over the whole request.
      speed = `${(usage.completion_tokens / ((ended - current.started) / 1000)).toFixed(1)} tokens/s (whole request)`;
    }
  }
  $("stat-speed").textContent = speed;
  ui.stats.hidden = false;
}

// --- small things ----------------------------------------------------------------------------------

function setBusy(busy) {
  document.body.classList.toggle("busy", busy);
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.newChat.disabled = busy;
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.disabled = busy || (radio.value === "chat" && !config.chat);
  }
  ui.transcript.setAttribute("aria-busy", String(busy));
}

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(error) {
  const message = document.createElement("p");
  message.className = "error-message";
  message.textContent = error.message;
  const details = [];
  if (error.status) details.push(`HTTP ${error.status}`);
  if (error.code) details.push(error.code);
  if (error.requestId) details.push(`request ${error.requestId}`);
  ui.error.replaceChildren(message);
  if (details.length) {
    const small = document.createElement("p");
    small.className = "error-details";
    small.textContent = details.join(" · ");
    ui.error.append(small);
  }
  ui.error.hidden = false;
  if (error.status === 401) {
    ui.keyField.hidden = false;
    ui.apiKey.focus();
  }
}

function clearError() {
  ui.error.hidden = true;
  ui.error.replaceChildren();
}

function nearEnd() {
  const box = ui.transcript;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

function scrollToEnd(stick) {
  if (stick) ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : formatSeconds(ms / 1000);
}

function formatSeconds(seconds) {
  return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
}

setup();
