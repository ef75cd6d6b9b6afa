// The playground: calls the real v1 chat route with a short-lived access token of the chosen app,
// streams the SSE answer chunk by chunk, and shows the verdict, usage, rate-limit headers and logprobs.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const CHAT = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/";
  const RATE_HEADERS = ["X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests",
                        "X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens"];
  let messages = [];          // the conversation so far (user / assistant turns)
  let tokens = {};            // app name -> {token, expires}
  let lastBody = null, lastService = null;
  let controller = null;

  function params() {
    const body = {};
    document.querySelectorAll("[data-param]").forEach((el) => {
      const name = el.dataset.param, kind = el.dataset.kind;
      if (kind === "boolean") { if (el.checked) body[name] = true; return; }
      const raw = el.value.trim();
      if (raw === "") return;
      if (kind === "number" || kind === "integer") {
        if (el.dataset.default !== "" && Number(raw) === Number(el.dataset.default)) return;
        body[name] = kind === "integer" ? parseInt(raw, 10) : Number(raw);
      } else if (kind === "lines") {
        body[name] = raw.split("\n").map((s) => s.trim()).filter(Boolean);
      } else {
        body[name] = raw;
      }
    });
    return body;
  }

  async function accessToken(app) {
    const cached = tokens[app];
    if (cached && cached.expires - 30 > Date.now() / 1000) return cached.token;
    const r = await fetch("/console/api/playground/token", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ app }), credentials: "same-origin",
    });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || "could not get an access token");
    tokens[app] = { token: data.access_token, expires: data.expires_at };
    return data.access_token;
  }

  function bubble(role) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const text = document.createElement("div");
    text.className = "text";
    div.append(who, text);
    $("pg-log").append(div);
    div.scrollIntoView({ block: "end" });
    return text;
  }

  function colour(p) { // probability 0..1 → red … green, light enough for dark text
    return "hsl(" + Math.round(120 * p) + ", 75%, 82%)";
  }

  function appendChunk(target, chunk, index) {
    const span = document.createElement("span");
    span.className = "chunk";
    span.dataset.sentenceId = chunk.sentence_id != null ? chunk.sentence_id : index;
    span.title = "chunk " + (index + 1) + (chunk.sentence_id != null ? " · sentence_id " + chunk.sentence_id : "");
    span.textContent = chunk.result || "";
    target.append(span);
    const content = chunk.logprobs && chunk.logprobs.content;
    if (content && content.length) appendTokens(target, content);
  }

  // With logprobs, the answer's tokens are shown again beneath it, each coloured by its probability,
  // with the alternatives on hover or focus. (A chunk's text and its tokens need not line up: the
  // server holds text back for moderation, so tokens are not drawn inside the chunks.)
  function appendTokens(target, content) {
    let strip = target.parentElement.querySelector(".tokens");
    if (!strip) {
      strip = document.createElement("div");
      strip.className = "tokens";
      strip.setAttribute("aria-label", "Tokens by probability");
      target.parentElement.append(strip);
    }
    content.forEach((entry) => {
      const tok = document.createElement("span");
      tok.className = "tok";
      const p = Math.exp(entry.logprob);
      tok.style.background = colour(p);
      tok.dataset.p = p.toFixed(4);
      tok.textContent = entry.token;
      tok.tabIndex = 0;
      const alts = (entry.top_logprobs || []).map((a) => JSON.stringify(a.token) + " " + (100 * Math.exp(a.logprob)).toFixed(1) + "%");
      tok.dataset.tip = "p=" + (100 * p).toFixed(1) + "%" + (alts.length ? "\n" + alts.join("\n") : "");
      tok.setAttribute("aria-label", entry.token + ", probability " + (100 * p).toFixed(1) + "%" + (alts.length ? ", alternatives " + alts.join(", ") : ""));
      strip.append(tok);
    });
  }

  function badge(text, cls, title) {
    const b = document.createElement("span");
    b.className = "badge " + cls;
    b.textContent = text;
    if (title) b.title = title;
    $("pg-badges").append(b);
  }

  function showMeta(last, headers, chunks, seconds) {
    $("pg-badges").textContent = "";
    const flag = last.flag || 0;
    badge("flag " + flag, flag ? "flag" : "ok", "content-safety level of this turn");
    if (last.ban_round !== undefined && last.ban_round !== null) badge("ban_round " + last.ban_round, "flag");
    if (last.need_clear_history) badge("need_clear_history", "flag", "the client should clear the conversation");
    if (last.finish_reason) badge("finish_reason " + last.finish_reason, last.finish_reason === "normal" ? "ok" : "warn");
    if (chunks) badge(chunks + " chunks", "info");
    const dl = $("pg-usage");
    dl.textContent = "";
    const add = (k, v) => { const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd"); dd.textContent = v; dl.append(dt, dd); };
    if (last.usage) { add("prompt_tokens", last.usage.prompt_tokens); add("completion_tokens", last.usage.completion_tokens); add("total_tokens", last.usage.total_tokens); }
    if (last.id) add("id", last.id);
    add("time", seconds.toFixed(2) + " s");
    RATE_HEADERS.forEach((h) => { const v = headers.get(h); if (v !== null) add(h, v); });
  }

  function showError(target, body) {
    target.classList.add("error");
    target.textContent = "error " + body.error_code + ": " + body.error_msg;
  }

  async function send(ev) {
    ev.preventDefault();
    const input = $("pg-input"), question = input.value.trim();
    if (!question) return;
    const service = $("pg-service").value, app = $("pg-app").value;
    if (!service || !app) { alert("Publish a service and create an app first."); return; }
    const stream = $("pg-stream").checked;
    const body = Object.assign({ messages: messages.concat([{ role: "user", content: question }]) }, params());
    if (stream) body.stream = true;
    lastBody = body; lastService = service; updateSnippet();
    bubble("user").textContent = question;
    const target = bubble("assistant");
    target.setAttribute("aria-busy", "true");
    $("pg-submit").disabled = true; $("pg-stop").disabled = false;
    controller = new AbortController();
    const started = performance.now();
    let text = "", last = {}, chunks = 0;
    try {
      const token = await accessToken(app);
      const r = await fetch(CHAT + encodeURIComponent(service) + "?access_token=" + encodeURIComponent(token), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
      });
      const type = r.headers.get("content-type") || "";
      if (type.startsWith("text/event-stream")) {
        const reader = r.body.getReader(), decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            if (!event.startsWith("data: ")) continue;
            const chunk = JSON.parse(event.slice(6));
            if (chunk.error_code) { showError(target, chunk); last = chunk; continue; }
            appendChunk(target, chunk, chunks++);
            text += chunk.result || "";
            last = chunk;
            target.parentElement.scrollIntoView({ block: "end" });
          }
        }
      } else {
        const answer = await r.json();
        if (answer.error_code) { showError(target, answer); last = answer; }
        else { appendChunk(target, answer, 0); text = answer.result || ""; last = answer; chunks = 0; }
      }
      showMeta(last, r.headers, chunks, (performance.now() - started) / 1000);
      if (!last.error_code && text) {
        messages = body.messages.concat([{ role: "assistant", content: text }]);
        input.value = "";
      }
      if (last.need_clear_history) {
        const note = document.createElement("p"); note.className = "hint";
        note.textContent = "The server asked to clear the history (need_clear_history): use “Clear conversation”.";
        $("pg-log").append(note);
      }
    } catch (err) {
      if (err.name !== "AbortError") { target.classList.add("error"); target.textContent = String(err.message || err); }
    } finally {
      target.setAttribute("aria-busy", "false");
      target.parentElement.dataset.done = "true";
      $("pg-submit").disabled = false; $("pg-stop").disabled = true;
      controller = null;
    }
  }

  function snippet(kind) {
    if (!lastBody) return "Send a message first.";
    const json = JSON.stringify(lastBody, null, 2);
    const base = location.origin;
    if (kind === "curl") {
      return "TOKEN=$(curl -s '" + base + "/oauth/2.0/token?grant_type=client_credentials&client_id=$API_KEY&client_secret=$SECRET_KEY' \\\n" +
        "  | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n" +
        "curl -X POST \"" + base + CHAT + lastService + "?access_token=$TOKEN\" \\\n  -H 'Content-Type: application/json' \\\n  -d '" +
        JSON.stringify(lastBody).replace(/'/g, "'\\''") + "'";
    }
    if (kind === "requests") {
      return "import os, requests\n\nBASE = " + JSON.stringify(base) + "\n" +
        "token = requests.post(BASE + \"/oauth/2.0/token\", params={\"grant_type\": \"client_credentials\",\n" +
        "    \"client_id\": os.environ[\"API_KEY\"], \"client_secret\": os.environ[\"SECRET_KEY\"]}).json()[\"access_token\"]\n" +
        "body = " + pyLiteral(lastBody) + "\n" +
        "r = requests.post(BASE + " + JSON.stringify(CHAT + lastService) + ", params={\"access_token\": token}, json=body" + (lastBody.stream ? ", stream=True" : "") + ")\n" +
        (lastBody.stream ? "for line in r.iter_lines():\n    if line:\n        print(line.decode())\n" : "print(r.json()[\"result\"])\n");
    }
    const extra = Object.assign({}, lastBody); delete extra.messages; delete extra.stream;
    const kwargs = Object.entries(extra).map(([k, v]) => ", " + k + "=" + pyLiteral(v)).join("");
    return "import os\nos.environ[\"QIANFAN_BASE_URL\"] = " + JSON.stringify(base) + "\n" +
      "os.environ.setdefault(\"QIANFAN_AK\", \"API_KEY\")  # the app's API Key\nos.environ.setdefault(\"QIANFAN_SK\", \"SECRET_KEY\")  # and Secret Key\n" +
      "import qianfan\n\nchat = qianfan.ChatCompletion(endpoint=" + JSON.stringify(lastService) + ")\n" +
      "resp = chat.do(messages=" + pyLiteral(lastBody.messages) + (lastBody.stream ? ", stream=True" : "") + kwargs + ")\n" +
      (lastBody.stream ? "for chunk in resp:\n    print(chunk[\"result\"], end=\"\", flush=True)\n" : "print(resp[\"result\"])\n");
  }

  function pyLiteral(v) {
    if (v === true) return "True";
    if (v === false) return "False";
    if (v === null) return "None";
    if (Array.isArray(v)) return "[" + v.map(pyLiteral).join(", ") + "]";
    if (typeof v === "object") return "{" + Object.entries(v).map(([k, x]) => JSON.stringify(k) + ": " + pyLiteral(x)).join(", ") + "}";
    return JSON.stringify(v);
  }

  let snippetKind = "curl";
  function updateSnippet() { $("pg-snippet").value = snippet(snippetKind); }

  document.querySelectorAll("[data-copy]").forEach((b) => b.addEventListener("click", async () => {
    snippetKind = b.dataset.copy;
    updateSnippet();
    const area = $("pg-snippet");
    area.focus(); area.select();
    try { await navigator.clipboard.writeText(area.value); b.textContent = b.textContent.replace(/ ✓$/, "") + " ✓"; } catch (e) { /* selected for Ctrl+C */ }
  }));
  $("pg-send").addEventListener("submit", send);
  $("pg-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); });
  $("pg-stop").addEventListener("click", () => controller && controller.abort());
  $("pg-clear").addEventListener("click", () => { messages = []; $("pg-log").textContent = ""; $("pg-badges").textContent = ""; $("pg-usage").textContent = ""; });
})();
