"""relive-stack: runs the store and the three services on one machine (`relive up`, `down`,
`status`, `demo`). It depends on every service package, so the SDK does not have to."""
