"""Generated gRPC/protobuf code for the entitlements.v1 API (see protos/)."""
