!> The trainer's procedures (declared in colnn_trainer).
submodule (colnn_trainer) colnn_trainer_submodule
  use colnn_status
  use colnn_strings, only: str
  use colnn_random, only: uniform_keys
  use colnn_optimizers, only: parse_optimizer
  use colnn_losses, only: builtin_loss_t, parse_loss
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  implicit none

contains

  module procedure trainer_configure
    character(len=:), allocatable :: msg
    type(optimizer_t) :: opt
    type(builtin_loss_t) :: l
    errmsg = ''
    call parse_optimizer(optimizer, opt, stat, msg)
    if (stat /= 0) then
      errmsg = msg
      return
    end if
    call parse_loss(loss, l, stat, msg)
    if (stat /= 0) then
      errmsg = msg
      return
    end if
    self%opt = opt
    if (allocated(self%loss)) deallocate (self%loss)
    allocate (self%loss, source=l)
    self%loss_text = trim(adjustl(loss))
    self%steps = 0
  end procedure trainer_configure

  module procedure trainer_describe
    spec%type_name = 'training'
    call spec%set_text('optimizer', self%opt%spec())
    if (allocated(self%loss_text)) then
      call spec%set_text('loss', self%loss_text)
    else
      call spec%set_text('loss', 'custom')
    end if
    call spec%set_text('iterations', str(self%opt%iterations))
    if (allocated(self%opt%s1)) then
      call spec%set_tensor_1d('slot_1', self%opt%s1)
      call spec%set_tensor_1d('slot_2', self%opt%s2)
      call spec%set_tensor_1d('slot_3', self%opt%s3)
    end if
  end procedure trainer_describe

  module procedure trainer_restore
    character(len=:), allocatable :: opt_text, loss_text, msg
    integer :: it
    call spec%get_text('optimizer', opt_text, stat, msg)
    if (stat == 0) call spec%get_text('loss', loss_text, stat, msg)
    if (stat == 0) call spec%get_int('iterations', it, stat, msg, min_value=0)
    if (stat /= 0) then
      errmsg = msg
      return
    end if
    if (loss_text == 'custom') loss_text = 'mse'
    call self%configure(opt_text, loss_text, stat, errmsg)
    if (stat /= 0) then
      ! configure's message names the optimizer or loss: add the file and line
      errmsg = spec%where()//': '//trim(errmsg)
      return
    end if
    self%opt%iterations = it
    self%steps = it
    if (spec%find_tensor('slot_1') > 0) then
      call spec%get_vector('slot_1', int(n), self%opt%s1, stat, msg)
      if (stat == 0) call spec%get_vector('slot_2', int(n), self%opt%s2, stat, msg)
      if (stat == 0) call spec%get_vector('slot_3', int(n), self%opt%s3, stat, msg)
      if (stat /= 0) then
        errmsg = msg
        return
      end if
    end if
    call spec%check_all_used(stat, msg)
    if (stat /= 0) errmsg = msg
  end procedure trainer_restore

  module procedure trainer_set_loss
    if (allocated(self%loss)) deallocate (self%loss)
    allocate (self%loss, source=loss)
    if (allocated(self%loss_text)) deallocate (self%loss_text)
  end procedure trainer_set_loss

  module procedure trainer_train_step
    integer :: nc, nt, j
    integer(i8) :: np
    loss_value = 0
    stat = COLNN_OK
    errmsg = ''
    if (.not. allocated(self%loss) .or. self%opt%kind == 0) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'train_step: configure an optimizer and a loss first'
      return
    end if
    nc = size(x, 2)
    nt = self%loss%n_targets(net%n_outputs)
    if (nt < 1) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'train_step: the loss cannot use '//str(net%n_outputs)//' outputs '// &
               '(gaussian_nll needs (mean, log variance) pairs: an even count)'
      return
    end if
    if (size(x, 1) /= net%n_inputs .or. nc < 1) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'train_step: the minibatch must be ('//str(net%n_inputs)//', n >= 1), got ('// &
               str(size(x, 1))//', '//str(nc)//')'
      return
    end if
    if (size(t, 1) /= nt .or. size(t, 2) /= nc) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'train_step: targets must be ('//str(nt)//', '//str(nc)//'), got ('// &
               str(size(t, 1))//', '//str(size(t, 2))//')'
      return
    end if
    if (.not. all(ieee_is_finite(x)) .or. .not. all(ieee_is_finite(t))) then
      stat = COLNN_ERR_NONFINITE
      errmsg = 'train_step '//str(self%steps + 1)//': NaN or Inf in the inputs or targets'
      return
    end if
    if (allocated(self%y)) then
      if (size(self%y, 2) /= nc) deallocate (self%y, self%dy)
    end if
    if (.not. allocated(self%y)) allocate (self%y(net%n_outputs, nc), self%dy(net%n_outputs, nc))
    np = net%num_trainable()
    if (.not. allocated(self%p)) allocate (self%p(np), self%g(np))
    if (.not. allocated(self%saved_layer_state)) allocate (self%saved_layer_state(net%num_state()))
    ! forward_train moves the batch-norm statistics: keep them to put back if the step fails
    call net%get_state(self%saved_layer_state)

    call self%state%forward_train(net, x, self%y, stat, errmsg)
    if (stat /= 0) then
      call net%set_state(self%saved_layer_state)
      return
    end if
    call self%loss%evaluate(self%y, t, loss_value, self%dy)
    if (.not. ieee_is_finite(loss_value) .or. .not. all(ieee_is_finite(self%dy))) then
      call net%set_state(self%saved_layer_state)
      stat = COLNN_ERR_NONFINITE
      errmsg = 'train_step '//str(self%steps + 1)//': the loss is not finite; weights unchanged'
      return
    end if
    if (self%loss%is_categorical_crossentropy() .and. net%ends_in_softmax()) then
      ! softmax + cross-entropy combined: dL/dlogits = (p sum(t) - t) / n, which stays exact
      ! where the probabilities underflow (the chain through 1/p does not)
      do j = 1, nc
        self%dy(:, j) = (self%y(:, j) * sum(t(:, j)) - t(:, j)) / nc
      end do
      call self%state%backward(net, self%dy, stat, errmsg, logits_gradient=.true.)
    else
      call self%state%backward(net, self%dy, stat, errmsg)
    end if
    if (stat /= 0) then
      call net%set_state(self%saved_layer_state)
      return
    end if
    call net%get_grads(self%g)
    if (.not. all(ieee_is_finite(self%g))) then
      call net%set_state(self%saved_layer_state)
      stat = COLNN_ERR_NONFINITE
      errmsg = 'train_step '//str(self%steps + 1)//': a gradient is not finite; weights unchanged'
      return
    end if
    call net%get_params(self%p)
    call self%opt%step(self%p, self%g)
    call net%set_params(self%p)
    self%steps = self%steps + 1
  end procedure trainer_train_step

  module procedure trainer_train_epoch
    integer, allocatable :: order(:)
    real(wp), allocatable :: xb(:, :), tb(:, :)
    real(wp) :: loss
    integer :: n, b0, m, nb, k
    mean_loss = 0
    n = size(x, 2)
    if (batch_size < 1 .or. n < 1 .or. size(t, 2) /= n) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'train_epoch: need batch_size >= 1 and as many target columns as inputs ('// &
               str(n)//' inputs, '//str(size(t, 2))//' targets)'
      return
    end if
    allocate (order(n))
    order = [(k, k = 1, n)]
    if (seed /= 0) call shuffled(seed, epoch, order)
    nb = 0
    do b0 = 1, n, batch_size
      m = min(batch_size, n - b0 + 1)
      xb = x(:, order(b0:b0 + m - 1))
      tb = t(:, order(b0:b0 + m - 1))
      call self%train_step(net, xb, tb, loss, stat, errmsg)
      if (stat /= 0) return
      mean_loss = mean_loss + loss
      nb = nb + 1
    end do
    mean_loss = mean_loss / nb
    if (present(x_val) .and. present(t_val) .and. present(val_loss)) then
      call self%evaluate(net, x_val, t_val, val_loss, stat, errmsg)
    end if
  end procedure trainer_train_epoch

  subroutine shuffled(seed, epoch, order)
    integer(i8), intent(in) :: seed
    integer, intent(in) :: epoch
    integer, intent(inout) :: order(:)
    real(wp), allocatable :: keys(:)
    integer :: i, j, n, tmp
    n = size(order)
    allocate (keys(n))
    call uniform_keys(seed, int(epoch, i8), keys)
    ! Fisher-Yates with the keys as the random draws
    do i = n, 2, -1
      j = 1 + min(i - 1, int(keys(i) * i))
      tmp = order(i)
      order(i) = order(j)
      order(j) = tmp
    end do
  end subroutine shuffled

  module procedure trainer_evaluate
    real(wp), allocatable :: y(:, :), dy(:, :)
    loss = 0
    if (.not. allocated(self%loss)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'evaluate: configure a loss first'
      return
    end if
    if (size(t, 1) /= self%loss%n_targets(net%n_outputs) .or. size(t, 2) /= size(x, 2)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'evaluate: targets do not match the inputs and the loss'
      return
    end if
    allocate (y(net%n_outputs, size(x, 2)), dy(net%n_outputs, size(x, 2)))
    call net%forward(x, y, stat, errmsg)
    if (stat /= 0) return
    call self%loss%evaluate(y, t, loss, dy)
  end procedure trainer_evaluate
end submodule colnn_trainer_submodule
