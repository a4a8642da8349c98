export const { createRoot } = window.ReactDOM;
