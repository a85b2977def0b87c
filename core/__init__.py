"""What server and client share: anatomy, data, model, payloads, bundle, inference."""
