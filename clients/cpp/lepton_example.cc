// A small C++ client for Lepton and an example that prints its results as one JSON object.
//
//   clients/cpp/build/lepton_example 127.0.0.1:50051
//
// x[i] = (i % 1000) / 7 as float for i < 1,000,000 (4 MB, streamed in 1 MiB chunks); runs sum, mean
// and a histogram on it, then matmul of two small matrices if some device advertises it.
//
// lepton::Client::submit(op, {{"x", lepton::tensor(values, shape)}}, params) is all a caller needs:
// it streams the spec and the raw little-endian bytes (ARCHITECTURE.md §7), reassembles the named result
// tensors, and throws lepton::Error (gRPC code + message) when the coordinator rejects the job.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "lepton/v1/coordinator_service.grpc.pb.h"

namespace lepton {

constexpr size_t kChunkBytes = 1 << 20;  // every message stays far below gRPC's 4 MiB default

// A dense tensor: dtype, shape and its C-order little-endian bytes.
struct Tensor {
  v1::DataType dtype = v1::DATA_TYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <typename T> v1::DataType dtype_of();
template <> v1::DataType dtype_of<float>() { return v1::DATA_TYPE_FLOAT32; }
template <> v1::DataType dtype_of<double>() { return v1::DATA_TYPE_FLOAT64; }
template <> v1::DataType dtype_of<int32_t>() { return v1::DATA_TYPE_INT32; }
template <> v1::DataType dtype_of<int64_t>() { return v1::DATA_TYPE_INT64; }
template <> v1::DataType dtype_of<int8_t>() { return v1::DATA_TYPE_INT8; }
template <> v1::DataType dtype_of<uint8_t>() { return v1::DATA_TYPE_UINT8; }
template <> v1::DataType dtype_of<int16_t>() { return v1::DATA_TYPE_INT16; }
template <> v1::DataType dtype_of<uint16_t>() { return v1::DATA_TYPE_UINT16; }
template <> v1::DataType dtype_of<uint32_t>() { return v1::DATA_TYPE_UINT32; }
template <> v1::DataType dtype_of<uint64_t>() { return v1::DATA_TYPE_UINT64; }

inline bool little_endian_host() {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// values in C order; shape defaults to 1-D.
template <typename T>
Tensor tensor(const std::vector<T>& values, std::vector<int64_t> shape = {}) {
  if (!little_endian_host()) throw std::runtime_error("big-endian hosts must byte-swap tensors first");
  if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  if (count != static_cast<int64_t>(values.size())) throw std::invalid_argument("shape does not match the values");
  return Tensor{dtype_of<T>(), std::move(shape),
                std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T))};
}

// Element i of a result tensor, as T (the caller checks dtype).
template <typename T>
T at(const Tensor& t, size_t i) {
  T v;
  std::memcpy(&v, t.bytes.data() + i * sizeof(T), sizeof(T));
  return v;
}

inline v1::Param int_param(int64_t v) { v1::Param p; p.set_int_value(v); return p; }
inline v1::Param float_param(double v) { v1::Param p; p.set_float_value(v); return p; }
inline v1::Param string_param(const std::string& v) { v1::Param p; p.set_string_value(v); return p; }
inline v1::Param float_list(std::initializer_list<double> values) {
  v1::Param p;
  for (double v : values) p.mutable_float_list()->add_values(v);
  return p;
}

class Error : public std::runtime_error {
 public:
  Error(grpc::StatusCode code, const std::string& details)
      : std::runtime_error(details), code(code), details(details) {}
  grpc::StatusCode code;
  std::string details;
};

inline std::string read_file(const std::string& path) {
  if (path.empty()) return "";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string env_or(const char* name, const std::string& value) {
  const char* v = std::getenv(name);
  return !value.empty() || !v ? value : v;
}

// TLS and the token. Empty fields fall back to LEPTON_TOKEN, LEPTON_TOKEN_FILE, LEPTON_TLS_CA,
// LEPTON_TLS_CERT and LEPTON_TLS_KEY; TLS is on when a CA or a certificate is given or tls is set
// (LEPTON_TLS=1: the system's roots), and the server's certificate is always checked.
struct Security {
  std::string token, token_file, tls_ca, tls_cert, tls_key;
  bool tls = false;

  std::shared_ptr<grpc::ChannelCredentials> credentials() const {
    const std::string ca = env_or("LEPTON_TLS_CA", tls_ca), cert = env_or("LEPTON_TLS_CERT", tls_cert);
    const std::string key = env_or("LEPTON_TLS_KEY", tls_key), flag = env_or("LEPTON_TLS", "");
    if (!tls && ca.empty() && cert.empty() && (flag.empty() || flag == "0")) return grpc::InsecureChannelCredentials();
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = read_file(ca);  // empty: the system's roots
    options.pem_private_key = read_file(key);
    options.pem_cert_chain = read_file(cert);
    return grpc::SslCredentials(options);
  }

  std::string bearer() const {
    std::string t = env_or("LEPTON_TOKEN", token);
    const std::string file = env_or("LEPTON_TOKEN_FILE", token_file);
    if (t.empty() && !file.empty()) {
      t = read_file(file);
      while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    }
    return t;
  }
};

class Client {
 public:
  explicit Client(const std::string& address, double timeout_seconds = 120, const Security& security = {})
      : stub_(v1::CoordinatorService::NewStub(grpc::CreateChannel(address, security.credentials()))),
        token_(security.bearer()),
        timeout_(timeout_seconds) {}

  // Run `op` on the named inputs; returns the named result tensors.
  std::map<std::string, Tensor> submit(const std::string& op, const std::map<std::string, Tensor>& inputs,
                                       const std::map<std::string, v1::Param>& params = {}) {
    grpc::ClientContext context;
    set_deadline(context);
    auto stream = stub_->SubmitJob(&context);

    v1::SubmitJobRequest first;
    v1::JobSpec* spec = first.mutable_spec();
    spec->set_op(op);
    for (const auto& [key, value] : params) (*spec->mutable_params())[key] = value;
    std::vector<const Tensor*> order;
    for (const auto& [name, t] : inputs) {
      v1::JobInput* input = spec->add_inputs();
      input->set_name(name);
      v1::TensorHeader* header = input->mutable_tensor();
      header->set_name(name);
      header->set_dtype(t.dtype);
      for (int64_t d : t.shape) header->add_shape(d);
      header->set_total_bytes(static_cast<int64_t>(t.bytes.size()));
      order.push_back(&t);
    }

    // Write on a thread of its own while this one reads, so progress events never stall the upload.
    std::thread writer([&] {
      if (!stream->Write(first)) return;
      for (uint32_t index = 0; index < order.size(); ++index) {
        const std::string& bytes = order[index]->bytes;
        for (size_t offset = 0; offset < bytes.size(); offset += kChunkBytes) {
          v1::SubmitJobRequest request;
          v1::TensorChunk* chunk = request.mutable_chunk();
          chunk->set_tensor_index(index);
          chunk->set_offset(static_cast<int64_t>(offset));
          chunk->set_data(bytes.data() + offset, std::min(kChunkBytes, bytes.size() - offset));
          if (!stream->Write(request)) return;  // the call ended (an error): Finish() says why
        }
      }
      stream->WritesDone();
    });

    std::vector<v1::TensorHeader> headers;
    std::vector<Tensor> results;
    std::string problem;
    v1::SubmitJobResponse response;
    while (problem.empty() && stream->Read(&response)) {
      if (response.has_result_header()) {
        const v1::TensorHeader& h = response.result_header();
        headers.push_back(h);
        Tensor t{h.dtype(), {h.shape().begin(), h.shape().end()}, {}};
        t.bytes.reserve(static_cast<size_t>(h.total_bytes()));
        results.push_back(std::move(t));
      } else if (response.has_result_chunk()) {
        const v1::TensorChunk& c = response.result_chunk();
        if (c.tensor_index() >= results.size() ||
            c.offset() != static_cast<int64_t>(results[c.tensor_index()].bytes.size()) ||
            c.offset() + static_cast<int64_t>(c.data().size()) > headers[c.tensor_index()].total_bytes()) {
          problem = "bad result chunk for tensor " + std::to_string(c.tensor_index());
          context.TryCancel();
        } else {
          results[c.tensor_index()].bytes += c.data();
        }
      }  // accepted / progress / done: job status snapshots
    }
    writer.join();
    grpc::Status status = stream->Finish();
    if (!problem.empty()) throw Error(grpc::StatusCode::INTERNAL, problem);
    if (!status.ok()) throw Error(status.error_code(), status.error_message());

    std::map<std::string, Tensor> out;
    for (size_t i = 0; i < headers.size(); ++i) {
      if (static_cast<int64_t>(results[i].bytes.size()) != headers[i].total_bytes())
        throw Error(grpc::StatusCode::DATA_LOSS, "result '" + headers[i].name() + "' is incomplete");
      out[headers[i].name()] = std::move(results[i]);
    }
    return out;
  }

  // Ops that at least one device in the cluster advertises.
  std::set<std::string> ops() {
    grpc::ClientContext context;
    set_deadline(context);
    v1::GetClusterStatusResponse response;
    grpc::Status status = stub_->GetClusterStatus(&context, v1::GetClusterStatusRequest(), &response);
    if (!status.ok()) throw Error(status.error_code(), status.error_message());
    std::set<std::string> ops;
    for (const auto& agent : response.agents())
      for (const auto& device : agent.devices()) ops.insert(device.ops().begin(), device.ops().end());
    return ops;
  }

 private:
  // Every call: its deadline and the token.
  void set_deadline(grpc::ClientContext& context) const {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(timeout_ * 1000)));
    if (!token_.empty()) context.AddMetadata("authorization", "Bearer " + token_);
  }
  std::unique_ptr<v1::CoordinatorService::Stub> stub_;
  std::string token_;
  double timeout_;
};

}  // namespace lepton

// ---- JSON output -----------------------------------------------------------------------------

static std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') { out += '\\'; out += static_cast<char>(c); }
    else if (c < 0x20) { char buf[8]; std::snprintf(buf, sizeof buf, "\\u%04x", c); out += buf; }
    else out += static_cast<char>(c);
  }
  return out + "\"";
}

static std::string json_number(double v, int digits) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

template <typename T>
static void json_values(std::ostringstream& os, const lepton::Tensor& t, int digits = 0) {
  size_t n = t.bytes.size() / sizeof(T);
  for (size_t i = 0; i < n; ++i) {
    if (i) os << ",";
    T v = lepton::at<T>(t, i);
    if constexpr (std::is_floating_point_v<T>) os << json_number(v, digits);
    else os << +v;
  }
}

static std::string json_tensor(const lepton::Tensor& t) {
  namespace v1 = lepton::v1;
  std::ostringstream os;
  std::string name = v1::DataType_Name(t.dtype);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  os << "{\"dtype\":" << json_string(name.substr(std::string("data_type_").size())) << ",\"shape\":[";
  for (size_t i = 0; i < t.shape.size(); ++i) os << (i ? "," : "") << t.shape[i];
  os << "],\"data\":[";
  switch (t.dtype) {
    case v1::DATA_TYPE_FLOAT32: json_values<float>(os, t, 9); break;
    case v1::DATA_TYPE_FLOAT64: json_values<double>(os, t, 17); break;
    case v1::DATA_TYPE_INT32: json_values<int32_t>(os, t); break;
    case v1::DATA_TYPE_INT64: json_values<int64_t>(os, t); break;
    case v1::DATA_TYPE_INT8: json_values<int8_t>(os, t); break;
    case v1::DATA_TYPE_UINT8: case v1::DATA_TYPE_BOOL: json_values<uint8_t>(os, t); break;
    case v1::DATA_TYPE_INT16: json_values<int16_t>(os, t); break;
    case v1::DATA_TYPE_UINT16: case v1::DATA_TYPE_FLOAT16: json_values<uint16_t>(os, t); break;  // f16: raw bits
    case v1::DATA_TYPE_UINT32: json_values<uint32_t>(os, t); break;
    case v1::DATA_TYPE_UINT64: json_values<uint64_t>(os, t); break;
    default: break;
  }
  os << "]}";
  return os.str();
}

static std::string json_results(const std::map<std::string, lepton::Tensor>& results) {
  std::string out = "{";
  for (const auto& [name, t] : results) out += (out.size() > 1 ? "," : "") + json_string(name) + ":" + json_tensor(t);
  return out + "}";
}

// lepton_example [ADDRESS] [--tls] [--tls-ca F] [--tls-cert F --tls-key F] [--token T | --token-file F]
int main(int argc, char** argv) {
  const char* env = std::getenv("LEPTON_ADDRESS");
  std::string address = env ? env : "127.0.0.1:50051";
  lepton::Security security;
  const std::map<std::string, std::string*> flags = {
      {"--token", &security.token}, {"--token-file", &security.token_file}, {"--tls-ca", &security.tls_ca},
      {"--tls-cert", &security.tls_cert}, {"--tls-key", &security.tls_key}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--tls") {
      security.tls = true;
    } else if (flags.count(arg)) {
      if (i + 1 >= argc) { std::cerr << "error: " << arg << " needs a value\n"; return 2; }
      *flags.at(arg) = argv[++i];
    } else if (arg.rfind("--", 0) == 0) {
      std::cerr << "error: unknown option " << arg << "\n";
      return 2;
    } else {
      address = arg;
    }
  }
  constexpr size_t n = 1000000;
  try {
    lepton::Client client(address, 60, security);  // seconds per call
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(static_cast<double>(i % 1000) / 7.0);

    std::ostringstream out;
    out << "{\"client\":\"cpp\",\"address\":" << json_string(address) << ",\"n\":" << n;
    out << ",\"sum\":" << json_results(client.submit("sum", {{"x", lepton::tensor(x)}}));
    out << ",\"mean\":" << json_results(client.submit("mean", {{"x", lepton::tensor(x, {int64_t(n)})}}));
    out << ",\"histogram\":"
        << json_results(client.submit("histogram", {{"x", lepton::tensor(x)}},
                                      {{"bins", lepton::int_param(10)}, {"range", lepton::float_list({0, 150})}}));

    // Errors come back as gRPC statuses with a message saying what to fix.
    try {
      client.submit("histogram", {{"x", lepton::tensor(std::vector<float>{1, 2, 3})}}, {{"bins", lepton::int_param(10)}});
      out << ",\"bad_request\":{\"code\":0}";
    } catch (const lepton::Error& e) {
      out << ",\"bad_request\":{\"code\":" << static_cast<int>(e.code) << ",\"details\":" << json_string(e.details)
          << "}";
    }

    // Devices advertise matmul by plan ("matmul.rows", "matmul.inner"); clients submit "matmul".
    bool has_matmul = false;
    for (const std::string& op : client.ops()) has_matmul |= op == "matmul" || op.rfind("matmul.", 0) == 0;
    if (has_matmul) {
      auto a = lepton::tensor(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
      auto b = lepton::tensor(std::vector<float>{7, 8, 9, 10, 11, 12}, {3, 2});
      out << ",\"matmul\":" << json_results(client.submit("matmul", {{"a", a}, {"b", b}}));
    } else {
      out << ",\"matmul\":{\"skipped\":\"no device in the cluster advertises op \\\"matmul\\\" (or a matmul.* plan)\"}";
      std::cerr << "matmul skipped: no device advertises it\n";
    }
    std::cout << out.str() << "}" << std::endl;
  } catch (const lepton::Error& e) {
    std::cerr << "error: gRPC status " << static_cast<int>(e.code) << ": " << e.details << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
