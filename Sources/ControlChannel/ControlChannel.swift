// ControlChannel: Kea-compatible command manager, JSON framer and control socket over IOLoop.
