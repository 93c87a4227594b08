// cairn console: the live parts. A page whose <main> has data-live follows the event
// feed (/console/live, Server-Sent Events) and, when an event arrives, fetches itself
// again and swaps in its live regions ([data-region]). Everything works without this
// script; it only saves a reload.
//
// Whatever ends the feed (a deploy's restart, a dropped connection, a server that
// answers with an error), the page says so at the top, connects again with a growing
// wait from the last event it saw, and refreshes once when it is following again.

const main = document.querySelector("main[data-live]");
const status = document.querySelector("[data-live-status]");
const banner = document.querySelector("[data-live-banner]");
const announcer = document.querySelector("[data-live-announce]");

// Why the feed ended, for the person watching the page.
const ENDINGS = {
  server_shutdown: "the server is restarting",
  token_expired: "the session's access expired",
  unavailable: "the server cannot read the log for now",
};

const FIRST_WAIT = 500;
const LONGEST_WAIT = 30000;

// `state` is connecting, live, reconnecting, offline or finished; `text` says it to a
// person. While the page is not following, the banner at the top says so plainly.
function setStatus(state, text) {
  if (status) {
    status.hidden = false;
    status.dataset.state = state;
    status.textContent = text;
  }
  if (banner) {
    const plain = state === "reconnecting" || state === "offline";
    banner.hidden = !plain;
    banner.textContent = plain ? text : "";
  }
}

function announce(text) {
  if (!announcer) return;
  // A change of text is what a screen reader announces: clear it first, so that the
  // same words twice are said twice.
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);
}

// What finds an element again in a fresh copy of its region: its id, its data-key,
// a form control's name and value, or a link's address.
function keyOf(element) {
  if (!element || element === document.body) return null;
  if (element.id) return `#${CSS.escape(element.id)}`;
  if (element.dataset.key) return `[data-key="${CSS.escape(element.dataset.key)}"]`;
  const tag = element.tagName.toLowerCase();
  if (element.name) {
    const value = element.value === undefined ? "" : `[value="${CSS.escape(element.value)}"]`;
    return `${tag}[name="${CSS.escape(element.name)}"]${value}`;
  }
  const href = element.getAttribute("href");
  if (href) return `${tag}[href="${CSS.escape(href)}"]`;
  return null;
}

// Times: each <time> shows how long ago (or how soon), with the browser's local time
// and UTC on hover; the log's times (to the millisecond) keep their UTC text.
const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const UNITS = [["year", 31536e6], ["month", 2592e6], ["day", 864e5], ["hour", 36e5], ["minute", 6e4], ["second", 1e3]];

function relative(at) {
  const delta = at - Date.now();
  for (const [unit, size] of UNITS) {
    if (Math.abs(delta) >= size || unit === "second") return RELATIVE.format(Math.round(delta / size), unit);
  }
  return "";
}

function showTimes(root) {
  for (const element of root.querySelectorAll("time[datetime]")) {
    const at = new Date(element.getAttribute("datetime"));
    if (Number.isNaN(at.getTime())) continue;
    if (!element.dataset.utc) {
      element.dataset.utc = element.textContent;
      const local = at.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
      element.title = `${local} (your time) · ${element.dataset.utc}`;
    }
    if (!element.dataset.utc.includes(".")) element.textContent = relative(at);
  }
}

// What the server last sent for each live region: a fresh copy is swapped in only when
// it differs from this, never because the script has since shown its times another way
// (a needless swap could take a click that was half done: pressed on the old link,
// released on the new one).
const served = new WeakMap();
for (const region of document.querySelectorAll("[data-region]")) served.set(region, region.innerHTML);

showTimes(document);
setInterval(() => showTimes(document), 30000);

function follow(query, url) {
  let source = null;
  let lastSeen = null;
  let wait = FIRST_WAIT;
  let retryTimer = null;
  let stopped = false;
  let arrived = 0;
  let pending = null;
  let refreshing = false;
  let again = false;

  const stop = (state, text) => {
    stopped = true;
    if (source) source.close();
    if (retryTimer) clearTimeout(retryTimer);
    setStatus(state, text);
  };

  const refresh = async () => {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const response = await fetch(url, { headers: { accept: "text/html", "x-cairn-refresh": "1" }, credentials: "same-origin" });
      if (response.redirected) {
        // The session ended: the next navigation says why.
        stop("offline", "Not live: you were signed out. Reload to sign in again.");
        return;
      }
      if (!response.ok) {
        if (!stopped && !retryTimer) setStatus("offline", "Not live: the page could not be fetched again. Reload for the latest.");
        return;
      }
      const next = new DOMParser().parseFromString(await response.text(), "text/html");
      let changed = 0;
      for (const region of document.querySelectorAll("[data-region]")) {
        const fresh = next.getElementById(region.id);
        if (!fresh || fresh.innerHTML === served.get(region)) continue;
        served.set(region, fresh.innerHTML);
        changed += 1;
        const checked = new Set([...region.querySelectorAll("input[type=checkbox]:checked")].map((i) => `${i.name}=${i.value}`));
        const active = document.activeElement;
        const focused = active && region.contains(active) ? keyOf(active) : null;
        region.replaceChildren(...fresh.childNodes);
        showTimes(region);
        for (const input of region.querySelectorAll("input[type=checkbox]")) {
          if (checked.has(`${input.name}=${input.value}`)) input.checked = true;
        }
        // The keyboard stays where it was: on the same control in the new copy.
        if (focused) region.querySelector(focused)?.focus({ preventScroll: true });
      }
      if (changed > 0 && arrived > 0) {
        announce(arrived === 1 ? "Updated: 1 new event." : `Updated: ${arrived} new events.`);
      }
      arrived = 0;
      const nextMain = next.querySelector("main");
      if (nextMain && !nextMain.hasAttribute("data-live")) {
        stop("finished", "finished: nothing more will change here");
      }
    } catch (error) {
      // While a reconnection is due, the banner keeps saying why the feed ended.
      if (!stopped && !retryTimer) setStatus("offline", "Not live: the server does not answer. Trying again…");
    } finally {
      refreshing = false;
      if (again) { again = false; schedule(); }
    }
  };

  const schedule = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refresh(); }, 150);
  };

  const reconnect = (why) => {
    if (stopped || retryTimer) return;
    if (source) source.close();
    const seconds = Math.max(1, Math.round(wait / 1000));
    setStatus("offline", `Not live: ${why}. Connecting again in ${seconds} s…`);
    retryTimer = setTimeout(() => { retryTimer = null; connect(); }, wait);
    wait = Math.min(wait * 2, LONGEST_WAIT);
  };

  const connect = () => {
    const after = lastSeen ? `&after=${encodeURIComponent(lastSeen)}` : "";
    source = new EventSource(`/console/live?${query}${after}`);
    const seen = (message) => { if (message.lastEventId) lastSeen = message.lastEventId; };
    // An event committed between this page's render (or the feed's end) and the
    // subscription would not arrive: refresh once when the feed is open.
    source.addEventListener("subscribed", (message) => {
      seen(message);
      wait = FIRST_WAIT;
      setStatus("live", "live");
      schedule();
    });
    source.addEventListener("event", (message) => { seen(message); arrived += 1; schedule(); });
    source.addEventListener("end", (message) => {
      seen(message);
      let reason = null;
      try { reason = JSON.parse(message.data).reason; } catch (error) { /* the default */ }
      reconnect(ENDINGS[reason] || "the feed ended");
    });
    source.onerror = () => {
      if (stopped) return;
      if (source.readyState === EventSource.CLOSED) {
        reconnect("the connection was refused");
        // A refused feed may mean the session ended: a fetch of the page says so.
        refresh();
      }
      else setStatus("reconnecting", "Not live: the connection dropped. Reconnecting…");
    };
  };

  setStatus("connecting", "connecting…");
  connect();
}

if (main) follow(main.dataset.live, main.dataset.liveUrl || location.href);

// A refused form's error summary links to each field it names: following a link puts
// the keyboard in that field (a link alone would only scroll to it).
for (const link of document.querySelectorAll("[data-error-summary] a[href^='#']")) {
  link.addEventListener("click", (click) => {
    const field = document.getElementById(decodeURIComponent(link.hash.slice(1)));
    if (!field) return;
    click.preventDefault();
    const target = field.matches("input, select, textarea") ? field : field.querySelector("input, select, textarea");
    field.scrollIntoView({ block: "center" });
    (target || field).focus({ preventScroll: true });
  });
}

// A failure group's "select all": ticks or clears every event of its code shown.
document.addEventListener("change", (change) => {
  const all = change.target.closest?.("input[data-select-all]");
  if (!all) return;
  for (const box of document.querySelectorAll(`input[data-group="${CSS.escape(all.dataset.selectAll)}"]`)) {
    box.checked = all.checked;
  }
});
// On a phone, the filters fold away unless one is in use, so that the list comes first.
if (matchMedia("(max-width: 40rem)").matches) {
  for (const fold of document.querySelectorAll("details[data-fold-on-phone]")) {
    const used = [...fold.querySelectorAll("input, select")].some((field) =>
      field.type === "checkbox" ? field.checked : field.value !== "");
    if (!used) fold.open = false;
  }
}

// What only works with the script (such as "select all") shows only with it.
document.documentElement.classList.add("js");
