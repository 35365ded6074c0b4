"""Watching a real ComfyUI server's progress messages for one node while a graph runs."""

from __future__ import annotations

import json
import threading


def progress_listener(server, node_id: str):
    """Collect the server's progress values for `node_id` from its websocket, in a thread."""
    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}", timeout=300)
    seen: list[int] = []

    def listen():
        try:
            while True:
                message = ws.recv()
                if isinstance(message, str):
                    data = json.loads(message)
                    if data.get("type") == "progress" and data["data"].get("node") == node_id:
                        seen.append(int(data["data"]["value"]))
        except Exception:  # the socket closes at the end of the test
            return

    threading.Thread(target=listen, daemon=True).start()
    return ws, seen
