// cairn console: the live parts. A page whose <main> has data-live follows the event
// feed (/console/live, Server-Sent Events) and, when an event arrives, fetches itself
// again and swaps in its live regions ([data-region]). Everything works without this
// script; it only saves a reload.

const main = document.querySelector("main[data-live]");
const status = document.querySelector("[data-live-status]");

function setStatus(state, text) {
  if (!status) return;
  status.dataset.state = state;
  status.textContent = text;
}

function follow(query, url) {
  const source = new EventSource(`/console/live?${query}`);
  let pending = null;
  let refreshing = false;
  let again = false;
  const refresh = async () => {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const response = await fetch(url, { headers: { accept: "text/html" }, credentials: "same-origin" });
      if (response.redirected) {
        // The session ended: the next navigation says why.
        source.close();
        setStatus("offline", "signed out: reload to sign in again");
        return;
      }
      if (!response.ok) { setStatus("offline", "offline: reload for the latest"); return; }
      const next = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of document.querySelectorAll("[data-region]")) {
        const fresh = next.getElementById(region.id);
        if (!fresh || fresh.innerHTML === region.innerHTML) continue;
        const checked = new Set([...region.querySelectorAll("input[type=checkbox]:checked")].map((i) => `${i.name}=${i.value}`));
        const focused = document.activeElement && region.contains(document.activeElement) ? document.activeElement.id : null;
        region.replaceChildren(...fresh.childNodes);
        for (const input of region.querySelectorAll("input[type=checkbox]")) {
          if (checked.has(`${input.name}=${input.value}`)) input.checked = true;
        }
        if (focused) document.getElementById(focused)?.focus();
      }
      const nextMain = next.querySelector("main");
      if (nextMain && !nextMain.hasAttribute("data-live")) {
        source.close();
        setStatus("offline", "finished");
      }
    } catch (error) {
      setStatus("offline", "offline: reload for the latest");
    } finally {
      refreshing = false;
      if (again) { again = false; schedule(); }
    }
  };
  const schedule = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refresh(); }, 150);
  };
  // An event committed between this page's render and the subscription would not
  // arrive: refresh once when the feed is open.
  source.addEventListener("subscribed", () => { setStatus("live", "live"); schedule(); });
  source.addEventListener("event", schedule);
  source.addEventListener("end", () => { setStatus("offline", "the feed ended: reload to follow again"); source.close(); });
  source.onerror = () => setStatus("offline", "reconnecting…");
}

if (main) follow(main.dataset.live, main.dataset.liveUrl || location.href);
