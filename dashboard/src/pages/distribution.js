const id = {{id_json}}, range = {{range_json}};
async function refresh() {
  for (const el of document.querySelectorAll('.chart')) {
    const r = await fetch(`/api/distributions/${encodeURIComponent(id)}/charts/${el.dataset.chart}?range=${range}`);
    if (r.ok) el.querySelector('.svg').innerHTML = await r.text();
  }
  const a = await fetch('/api/alarms');
  if (a.ok) {
    const rows = (await a.json()).filter(s => s.distribution === id);
    const t = document.getElementById('alarms');
    t.querySelectorAll('tr.alarm').forEach(r => r.remove());
    for (const s of rows) {
      const tr = t.insertRow(); tr.className = 'alarm';
      const st = s.state;
      tr.insertCell().textContent = s.alarm;
      const c = tr.insertCell(); c.textContent = st; c.className = st;
      tr.insertCell().textContent = s.datapoints.map(v => v === null ? '–' : v.toFixed(1)).join(', ');
    }
  }
}
setInterval(refresh, 10000);
