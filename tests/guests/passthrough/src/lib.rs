//! Forwards every record unchanged to the output `out`: the stateless
//! component of `weir bench embedded`, measuring what the wasm layer costs
//! on top of the backend's raw read → write loop.

use weir_sdk::prelude::*;

pub struct Passthrough;

impl Processor for Passthrough {
    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        ctx.forward("out", &rec)
    }
}

export_processor!(Passthrough);
