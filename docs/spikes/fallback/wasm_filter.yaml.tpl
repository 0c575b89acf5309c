            - name: envoy.filters.http.wasm
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                config:
                  name: spike
                  root_id: spike
                  configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: "__CFG__"}
                  vm_config:
                    runtime: envoy.wasm.runtime.v8
                    vm_id: spike
                    code: {local: {filename: __WASM__}}
