// A C++ capnp 0.9 peer for vat's interop tests (cpp_test.go), standing in
// for OCaml capnp-rpc: restores are by object id (EzRpc's importCap and
// exportCap, i.e. a Bootstrap whose deprecatedObjectId is a Text).
//
//   peer client HOST:PORT ID REQUEST  -> makes the unary call three times
//                                        on one connection and prints each
//                                        reply's status message, or
//                                        "exception: ..." (then stops)
//   peer server                       -> serves GrpcService as "svc" on
//                                        127.0.0.1, prints "port N"
#include <capnp/ez-rpc.h>
#include <kj/debug.h>
#include <iostream>
#include "bridge.capnp.h"

class Service final : public GrpcService::Server {
 protected:
  kj::Promise<void> unary(UnaryContext context) override {
    auto req = context.getParams().getRequest();
    auto st = context.getResults().initReply().initStatus();
    std::string msg = "cpp:" + std::string(req.asChars().begin(), req.size());
    st.setMessage(msg);
    return kj::READY_NOW;
  }
};

int main(int argc, char** argv) {
  if (argc >= 5 && std::string(argv[1]) == "client") {
    capnp::EzRpcClient client(argv[2]);
    auto& ws = client.getWaitScope();
    auto svc = client.importCap<GrpcService>(argv[3]);
    // Three calls on the one connection: each response's Finish goes
    // before the next call (0.9 sends it even when the Return says
    // noFinishNeeded), and the next call may reuse its question id.
    for (int i = 0; i < 3; i++) {
      auto req = svc.unaryRequest();
      req.setRequest(kj::StringPtr(argv[4]).asBytes());
      try {
        auto res = req.send().wait(ws);
        std::cout << res.getReply().getStatus().getMessage().cStr() << std::endl;
      } catch (kj::Exception& e) {
        std::cout << "exception: " << e.getDescription().cStr() << std::endl;
        break;
      }
    }
    return 0;
  }
  if (argc >= 2 && std::string(argv[1]) == "server") {
    capnp::EzRpcServer server("127.0.0.1:0");
    server.exportCap("svc", kj::heap<Service>());
    auto& ws = server.getWaitScope();
    std::cout << "port " << server.getPort().wait(ws) << std::endl;
    kj::NEVER_DONE.wait(ws);
  }
  std::cerr << "usage: peer client HOST:PORT ID REQUEST | peer server" << std::endl;
  return 2;
}
