"""matrix-sip-bridge: Matrix 1:1 VoIP <-> SIP."""
