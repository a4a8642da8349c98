// A React page on the hooks: seed 004's useWebSocket(projectId) renders the
// connection status and the last event; window.setProject() switches or
// (null) unmounts the component, which must unsubscribe.
import { createElement as h, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { LiveHub } from '/livehub.js';
import { LiveHubProvider, useWebSocket, useStatus } from '/react.js';

const params = new URLSearchParams(location.search);
const client = new LiveHub(params.get('ws'), { token: params.get('token') });
window.client = client;

function Project({ projectId }) {
  const { status, lastEvent } = useWebSocket(projectId);
  const d = lastEvent && lastEvent.data;
  return h('div', { id: 'project' },
    h('p', { id: 'hook-status' }, status),
    h('p', { id: 'last' }, lastEvent ? `${lastEvent.type} ${lastEvent.channel} ${d.jobId} ${d.progress}` : 'none'));
}

function Header() {
  return h('p', { id: 'conn' }, useStatus());
}

function App() {
  const [projectId, setProject] = useState(params.get('project'));
  window.setProject = setProject;
  return h(LiveHubProvider, { client }, h(Header), projectId ? h(Project, { projectId, key: projectId }) : h('p', { id: 'none' }, 'unmounted'));
}

createRoot(document.getElementById('root')).render(h(App));
