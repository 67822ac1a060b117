//! A well-formed component that implements some other world: weir must refuse
//! it at load time and name what is missing.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        inline: "
            package other:thing;
            world greeter {
                export greet: func(name: string) -> string;
            }
        ",
    });

    struct Greeter;
    impl Guest for Greeter {
        fn greet(name: String) -> String {
            format!("hello {name}")
        }
    }
    export!(Greeter);
}
