//! Presentation: which one VM is shown and gets the input. It is a flag,
//! not a lifecycle state: presenting a VM hides the one presented before,
//! and any step away from `running`/`paused` clears it
//! ([`Supervisor::step`]). With cgroups, the presented VM gets the larger
//! CPU weight.

use rayos_api::{ActionReply, EventKind};

use super::{OpError, Supervisor, lock};
use crate::lifecycle::Op;

impl Supervisor {
    /// Shows the VM and gives it the input (hiding the VM shown before).
    pub fn present(&self, name: &str) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let slot = self.slot(name)?;
        let previous = {
            let st = lock(&slot.status);
            self.require(&slot, Op::Present, st.state)?;
            let mut p = lock(&self.presented);
            p.replace(name.to_string())
        };
        let mut message = format!("VM {name} is presented");
        if let Some(prev) = previous.filter(|p| p != name) {
            if let Ok(ps) = self.slot(&prev) {
                let state = lock(&ps.status).state;
                self.events
                    .emit(&prev, EventKind::Hidden, state, format!("{name} presented"));
            }
            if let Some(c) = &self.cgroups {
                let _ = c.set_presented(&prev, false);
            }
            message.push_str(&format!("; {prev} is hidden"));
        }
        if let Some(c) = &self.cgroups {
            let _ = c.set_presented(name, true);
        }
        let state = lock(&slot.status).state;
        self.events.emit(name, EventKind::Presented, state, "");
        Ok(self.reply(&slot, message, None))
    }

    /// Hides the VM (the home screen shows).
    pub fn hide(&self, name: &str) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let was = {
            let mut p = lock(&self.presented);
            if p.as_deref() == Some(name) {
                p.take();
                true
            } else {
                false
            }
        };
        let state = lock(&slot.status).state;
        if was {
            if let Some(c) = &self.cgroups {
                let _ = c.set_presented(name, false);
            }
            self.events.emit(name, EventKind::Hidden, state, "");
            Ok(self.reply(&slot, format!("VM {name} is hidden"), None))
        } else {
            Ok(self.reply(&slot, format!("VM {name} was not presented"), None))
        }
    }
}
